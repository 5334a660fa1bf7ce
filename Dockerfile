# The one jetmedia image: every stage and the collector run from it (`jetmedia worker STAGE`,
# `jetmedia collector`), see compose.yaml. libvips and ffmpeg come from Python wheels
# (pyvips-binary, imageio-ffmpeg), so the base image needs no system packages.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home jetmedia

USER jetmedia
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["jetmedia", "health"]
CMD ["jetmedia", "worker"]
