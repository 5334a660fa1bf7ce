"""`jetmedia gateway`: the HTTP front door (ASGI: Litestar on uvicorn).

Web apps and S3 notifications reach jetmedia here instead of speaking NATS: presigned uploads,
asset and export jobs, job state with presigned output URLs, live progress as Server-Sent Events
from a KV watch, cancel and retry, S3 event hooks. Stateless: NATS KV and S3 hold everything, so
replicas scale like the stages. Modules: app (routes), auth (tokens), limits (rate and quota in
KV), sse, hooks, views, problems (RFC 9457), httpmetrics, server (uvicorn).
"""
