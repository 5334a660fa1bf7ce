"""JSON Schemas (2020-12) and an AsyncAPI 3 document, generated from the message Structs (and the
job record's schema, from `shared.jobs.Job`).

`jetmedia schemas` writes them into schemas/; a test regenerates them and fails on drift, so
what a producer in another language reads is always what the code decodes.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import msgspec
import yaml

from . import __version__
from . import messages as m
from .jobs import Job

DIALECT = "https://json-schema.org/draft/2020-12/schema"
JOB_SCHEMA = "jetmedia.job.schema.json"  # the KV record's schema (not a message)

# Which subject carries which event type (what a producer needs besides the schema).
CHANNELS: dict[str, tuple[str, type[m.Event], str]] = {
    "uploadAsset": (m.UPLOAD_ASSET, m.AssetUploaded, "Producers: an asset landed in S3."),
    "variant": (m.VARIANT, m.VariantRequested, "Internal: image work for the variant stage."),
    "transcode": (m.TRANSCODE, m.TranscodeRequested, "Internal: audio/video work for the transcode stage."),
    "finalizeAsset": (m.FINALIZE_ASSET, m.PartDone, "Internal: a finished part of an asset job."),
    "assetReady": (m.EVENTS_ASSET_READY, m.AssetReady, "Consumers: every output of an asset is in S3."),
    "jobFailed": (m.EVENTS_JOB_FAILED, m.JobFailed, "Consumers: a job failed, with the reason."),
    "jobCancelled": (m.EVENTS_JOB_CANCELLED, m.JobCancelled, "Consumers: a job was cancelled."),
    "jobExpired": (m.EVENTS_JOB_EXPIRED, m.JobExpired, "Consumers: an export's download window passed."),
    "rejected": (m.EVENTS_REJECTED, m.EventRejected,
                 "Producers: a message was refused and no job record can carry the answer."),
    "uploadExport": (m.UPLOAD_EXPORT, m.ExportRequested, "Producers: make one ZIP of many objects."),
    "cancel": (m.UPLOAD_CANCEL, m.CancelRequested, "Producers: cancel a job."),
    "chunk": (m.CHUNK, m.ChunkRequested, "Internal: check one chunk of an export's sources."),
    "finalizeExport": (m.FINALIZE_EXPORT, m.ExportFinalize, "Internal: stream an export's archive."),
    "exportReady": (m.EVENTS_EXPORT_READY, m.ExportReady, "Consumers: an export archive is downloadable."),
    "deadLetters": (m.DLQ_PREFIX + ".{stage}", m.DeadLetter, "Operators: messages that could not be handled."),
}


def event_types() -> list[type[m.Event]]:
    return list(typing.get_args(m.AnyEvent))


def tag_of(cls: type[m.Event]) -> str:
    return str(cls.__struct_config__.tag)


def render() -> dict[str, str]:
    """File name -> content, for every generated file."""
    types = event_types()
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    files: dict[str, str] = {}
    for cls, schema in zip(types, schemas, strict=True):
        name = schema["$ref"].rsplit("/", 1)[1]
        doc = {
            "$schema": DIALECT,
            "$id": f"https://jetmedia.dev/schemas/{tag_of(cls)}.schema.json",
            "title": tag_of(cls),
            "description": (cls.__doc__ or "").strip() or f"CloudEvents 1.0 message of type {tag_of(cls)}",
            "$ref": f"#/$defs/{name}",
            "$defs": _reachable(name, components),
        }
        files[f"{tag_of(cls)}.schema.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    files[JOB_SCHEMA] = json.dumps(_job_schema(), indent=2, sort_keys=True) + "\n"
    files["asyncapi.yaml"] = yaml.safe_dump(_asyncapi(types), sort_keys=False, width=100)
    return files


def _job_schema() -> dict[str, typing.Any]:
    """The value under each key of the `jetmedia-jobs` KV bucket: part of the producer contract."""
    [schema], components = msgspec.json.schema_components([Job], ref_template="#/$defs/{name}")
    return {
        "$schema": DIALECT,
        "$id": f"https://jetmedia.dev/schemas/{JOB_SCHEMA}",
        "title": "jetmedia job record",
        "description": (Job.__doc__ or "").strip(),
        "$ref": schema["$ref"],
        "$defs": dict(sorted(components.items())),
    }


def _reachable(root: str, components: dict[str, typing.Any]) -> dict[str, typing.Any]:
    seen: dict[str, typing.Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = components[name]
        todo.extend(_refs(components[name]))
    return dict(sorted(seen.items()))


def _refs(node: typing.Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _asyncapi(types: list[type[m.Event]]) -> dict[str, typing.Any]:
    _schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    channels, operations, messages = {}, {}, {}
    for channel, (address, cls, description) in CHANNELS.items():
        message = cls.__name__
        messages[message] = {
            "name": tag_of(cls),
            "contentType": "application/json",
            "headers": {"type": "object", "properties": {"Nats-Msg-Id": {
                "type": "string", "description": "Equal to the CloudEvents id; duplicates are dropped."}}},
            "payload": {"$ref": f"#/components/schemas/{message}"},
        }
        channels[channel] = {
            "address": address,
            "description": description,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }
        operations[f"publish_{channel}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "jetmedia", "version": __version__,
                 "description": "jetmedia's messages: CloudEvents 1.0 structured JSON on NATS JetStream."},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(components.items()))},
    }


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    expected = render()
    for stale in directory.glob("*.schema.json"):
        if stale.name not in expected:
            stale.unlink()
    for name, content in expected.items():
        path = directory / name
        path.write_text(content)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of generated files that differ from (or are missing in) `directory`."""
    expected = render()
    present = {p.name for p in directory.glob("*.schema.json")} | (
        {"asyncapi.yaml"} if (directory / "asyncapi.yaml").exists() else set()
    )
    changed = [n for n, c in expected.items() if not (directory / n).exists() or (directory / n).read_text() != c]
    return sorted(set(changed) | (present - set(expected)))
