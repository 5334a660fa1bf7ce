"""The embedded S3 endpoint: moto's S3 service alone, served by waitress.

`python -m moto.server` is made for many services and light traffic, and on the two cores the dev
stack shares with the stages it cost more CPU than the S3 work itself:
- its werkzeug development server closes the connection after every response, so each S3 call
  was a new TCP connection and a new server thread (and a new connection in the client);
- its dispatcher decides which of moto's ~200 services a request is for by listing moto's package
  directory (~180 `stat` calls) on every request, under a global lock.
Here the S3 app is built once and every request goes straight to it, and waitress keeps
connections alive and runs requests on a fixed thread pool. Measured with one GET of 2.4 MB and
two PUTs of 36 KB (an image through the variant stage): server CPU 11.4 → 5.4 ms, client CPU 9.5 →
5.3 ms (docs/benchmarks.md, variant section). moto's admin API (`/moto-api/`, used as the
readiness probe) still goes through moto's own dispatcher.

    python -m shared.s3server --port 9000          # binds 127.0.0.1 unless --host says otherwise
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server

log = logging.getLogger("jetmedia.s3server")

BODY_IN_MEMORY = 64 << 20  # request/response bodies up to this stay in RAM (export parts are 8 MiB)


class S3Only(DomainDispatcherApplication):
    """moto's dispatcher, short-circuited: everything but the admin API is S3."""

    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self._s3: Any = None
        self._s3_lock = threading.Lock()

    def get_application(self, environ: dict[str, Any]) -> Any:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return super().get_application(environ)
        if self._s3 is None:
            with self._s3_lock:
                if self._s3 is None:
                    self._s3 = self.create_app("s3")
        return self._s3


class _Parser(HTTPRequestParser):
    """waitress 3.0 answers `Expect: 100-continue` with "100 Continue" and then waits for a body
    even when Content-Length is 0 (its `send_continue()` marks the complete request incomplete
    again), so botocore's PUT of an empty object hung until the client's read timeout. With no
    body there is nothing to continue: answer the request itself."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if not self.chunked and self.content_length == 0:
            self.expect_continue = False


class _Channel(HTTPChannel):
    parser_class = _Parser


def serve(host: str, port: int, threads: int = 8) -> None:
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" is not news here
    server: Any = create_server(
        S3Only(), host=host, port=port, threads=threads, ident="jetmedia-s3",
        inbuf_overflow=BODY_IN_MEMORY, outbuf_overflow=BODY_IN_MEMORY,
        connection_limit=1000, channel_timeout=300, asyncore_use_poll=True,
    )
    server.channel_class = _Channel
    log.info("S3 (moto) listening on http://%s:%d", host, port)
    server.run()


def main() -> None:
    parser = argparse.ArgumentParser(description="The embedded S3 endpoint (moto's S3, under waitress).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8, help="request threads (default 8)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(args.host, args.port, args.threads)


if __name__ == "__main__":
    main()
