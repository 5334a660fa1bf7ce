"""Who gets a final event: the job's own `callback_url`, and every matching subscription.

Subscriptions come from `JETMEDIA_WEBHOOKS` (a JSON list, or a file holding one), read once at
start-up. A delivery message names its receiver (`callback` or a subscription's name), never its
secret: the secret is looked up here when the attempt is made, so secrets stay out of JetStream.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

from shared import messages as m
from shared.config import Settings
from shared.jobs import Job
from shared.messages import url_shown as shown

from . import signing

CALLBACK = "callback"  # the receiver name of a job's own callback_url
FINAL_TYPES = (m.AssetReady, m.ExportReady, m.JobFailed, m.JobCancelled, m.JobExpired)
FINAL_SUBJECTS = (m.EVENTS_ASSET_READY, m.EVENTS_EXPORT_READY, m.EVENTS_JOB_FAILED, m.EVENTS_JOB_CANCELLED,
                  m.EVENTS_JOB_EXPIRED)


class Subscription(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    secret: str
    events: list[str] = []  # `asset.ready`, `job.failed`, ... or full types; empty: every final event
    prefix: str | None = None  # only assets whose source key starts with this
    name: str = ""  # default: derived from the URL

    def matches(self, event: m.Event, subject: str, job: Job | None) -> bool:
        short = subject.removeprefix("jetmedia.events.")
        kind = str(type(event).__struct_config__.tag)
        if self.events and short not in self.events and kind not in self.events:
            return False
        if self.prefix is not None:
            key = job.source_key if job is not None and job.kind == "asset" else None
            return key is not None and key.startswith(self.prefix)
        return True


@dataclass(frozen=True)
class Target:
    name: str
    url: str


def subscriptions(settings: Settings) -> dict[str, Subscription]:
    """JETMEDIA_WEBHOOKS by name; ValueError (reported at start-up) for anything unusable."""
    raw = settings.webhooks.strip()
    if not raw:
        return {}
    if not raw.startswith("["):
        try:
            with open(os.path.expanduser(raw), "rb") as file:
                raw = file.read().decode()
        except OSError as exc:
            raise ValueError(f"JETMEDIA_WEBHOOKS: not a JSON list, nor a readable file ({exc.strerror})") from None
    try:
        found = msgspec.json.decode(raw, type=list[Subscription])
    except msgspec.MsgspecError as exc:
        raise ValueError(f"JETMEDIA_WEBHOOKS: {exc}") from None
    named: dict[str, Subscription] = {}
    for sub in found:
        name = sub.name or "sub-" + hashlib.sha256(sub.url.encode()).hexdigest()[:8]
        if name in named or name == CALLBACK or not m.is_job_id(name) or "." in name:
            raise ValueError(f"JETMEDIA_WEBHOOKS: subscription name {name!r} is taken, reserved or not "
                             "a token of [-_=a-zA-Z0-9]")
        if problem := _url_problem(sub.url):
            raise ValueError(f"JETMEDIA_WEBHOOKS: subscription {name}: {problem}")
        try:
            signing.check(sub.secret)
        except ValueError as exc:
            raise ValueError(f"JETMEDIA_WEBHOOKS: subscription {name}: {exc}") from None
        named[name] = msgspec.structs.replace(sub, name=name)
    return named


def _url_problem(url: str) -> str | None:
    """callback_problem's, refusing `user:password@` too: it would be refused at every attempt
    (safety.check), so a subscription with one is refused at start-up (the URL shown without it)."""
    with contextlib.suppress(ValueError):
        if "@" in urlsplit(url).netloc:
            return (f"{shown(url)}: user:password@ in a webhook URL is not supported "
                    "(put a token in the path or query instead)")
    return m.callback_problem(url)


def check(settings: Settings) -> None:
    """Start-up check of everything notify reads from the settings (ValueError says what)."""
    subscriptions(settings)
    if settings.webhook_secret:
        try:
            signing.check(settings.webhook_secret)
        except ValueError as exc:
            raise ValueError(f"JETMEDIA_WEBHOOK_SECRET: {exc}") from None
    if any(delay < 0 for delay in settings.webhook_retry_schedule):
        raise ValueError("JETMEDIA_WEBHOOK_RETRY_SCHEDULE: delays are seconds >= 0")


def targets(event: m.Event, subject: str, job: Job | None, subs: dict[str, Subscription]) -> list[Target]:
    found = [Target(CALLBACK, job.callback_url)] if job is not None and job.callback_url else []
    return found + [Target(name, sub.url) for name, sub in subs.items() if sub.matches(event, subject, job)]


def secret_for(name: str, settings: Settings, subs: dict[str, Subscription]) -> str | None:
    if name == CALLBACK:
        return settings.webhook_secret or None
    sub = subs.get(name)
    return sub.secret if sub is not None else None
