"""JSON Schemas (2020-12) and an AsyncAPI 3 document, generated from the message Structs (and the
job record's schema, from `shared.jobs.Job`).

`jetmedia schemas` writes them into schemas/; a test regenerates them and fails on drift, so
what a producer in another language reads is always what the code decodes.
"""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import yaml

from . import __version__
from . import messages as m
from .bus import LANES, STREAMS, laned
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


RECEIVES = frozenset({"uploadAsset", "uploadExport", "cancel", "variant", "transcode", "finalizeAsset", "chunk",
                      "finalizeExport"})  # channels jetmedia consumes
SENDS = frozenset({"variant", "transcode", "finalizeAsset", "chunk", "finalizeExport", "assetReady", "exportReady",
                   "jobFailed", "jobCancelled", "jobExpired", "rejected", "deadLetters"})  # channels it publishes to


def examples() -> dict[str, list[m.Event]]:
    """One example per channel's message, as the tests send and receive them (tests/faults/test_contract.py
    publishes the producers' ones as raw JSON; tests/unit/test_asyncapi.py decodes every one)."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    out = m.OutputFile(preset="thumb", key="variants/c-good/thumb.webp", format="webp", bytes=5120, width=400,
                       height=300)
    return {
        "uploadAsset": [m.AssetUploaded(id="c-good", source="node-app", time=at,
                                        data=m.AssetUploadedData(key="uploads/ok.jpg"))],
        "uploadExport": [m.ExportRequested(id="exp-1", source="node-app", time=at, data=m.ExportRequestedData(
            keys=["uploads/a.jpg", "uploads/b.mp3"], name="holiday", transform="original"))],
        "cancel": [m.CancelRequested(id="cancel-1", source="node-app", time=at,
                                     data=m.CancelRequestedData(job="c-cancel", reason="customer left"))],
        "variant": [m.VariantRequested(id="c-good:variant:c-good", time=at, subject="c-good",
                                       data=m.VariantRequestedData(job="c-good", asset="c-good", bucket="jetmedia",
                                                                   key="uploads/ok.jpg"))],
        "transcode": [m.TranscodeRequested(id="v-1:transcode:v-1", time=at, subject="v-1",
                                           data=m.TranscodeRequestedData(job="v-1", asset="v-1", bucket="jetmedia",
                                                                         key="uploads/clip.mp4"))],
        "finalizeAsset": [m.PartDone(id="c-good:variant:c-good", time=at, subject="c-good", data=m.PartData(
            job="c-good", asset="c-good", part="variant", outputs=[out], colours=["#c81e1e"]))],
        "chunk": [m.ChunkRequested(id="exp-1:chunk:0", time=at, subject="exp-1", data=m.ChunkRequestedData(
            job="exp-1", chunk=0, bucket="jetmedia", items=[m.ExportItem(key="uploads/a.jpg", name="a.jpg")]))],
        "finalizeExport": [m.ExportFinalize(id="exp-1:finalize-export", time=at, subject="exp-1",
                                            data=m.ExportFinalizeData(job="exp-1", chunks=1))],
        "assetReady": [m.AssetReady(id="c-good:ready", time=at, subject="c-good", data=m.AssetReadyData(
            job="c-good", asset="c-good", key="uploads/ok.jpg", media="image", outputs=[out]))],
        "exportReady": [m.ExportReady(id="exp-1:ready", time=at, subject="exp-1", data=m.ExportReadyData(
            job="exp-1", url="https://s3.example/jetmedia/exports/exp-1/holiday.zip?X-Amz-Signature=...",
            expires=at, files=2, bytes=1048576, parts=[m.ExportFile(
                name="holiday.zip", key="exports/exp-1/holiday.zip", bytes=1048576, files=2)]))],
        "jobFailed": [m.JobFailed(id="c-missing:failed", time=at, subject="c-missing", data=m.JobFailedData(
            job="c-missing", stage="upload", error="invalid event: data.key: required"))],
        "jobCancelled": [m.JobCancelled(id="c-cancel:cancelled", time=at, subject="c-cancel", data=m.JobEndedData(
            job="c-cancel", stage="upload", reason="customer left"))],
        "jobExpired": [m.JobExpired(id="exp-1:expired", time=at, subject="exp-1", data=m.JobEndedData(
            job="exp-1", stage="finalize", reason="download window passed"))],
        "rejected": [m.EventRejected(id="rejected:JM_UPLOAD:7", time=at, data=m.EventRejectedData(
            reason="invalid event: id: not a job id (" + m.JOB_ID_RULE + ")", stage="upload",
            original_subject=m.UPLOAD_ASSET, original_id="urn:uuid:1234", original_type="jetmedia.asset.uploaded.v1",
            job="urn:uuid:1234", dead_letter="dlq:JM_UPLOAD:7"))],
        "deadLetters": [m.DeadLetter(id="dlq:JM_UPLOAD:7", time=at, subject=None, data=m.DeadLetterData(
            stage="upload", error_class="Refused", error="invalid event: not JSON (JSON is malformed)",
            permanent=True, delivery_count=1, stream="JM_UPLOAD", stream_seq=7, original_subject=m.UPLOAD_ASSET,
            original="not json {", original_size=10,
            original_sha256="c3f07c17117dc1953b6b514cc4e816c00a33fb6cbbe66cbb31e5e22cd1a05fd0"))],
    }


def _asyncapi(types: list[type[m.Event]]) -> dict[str, typing.Any]:
    """AsyncAPI 3.1 from jetmedia's side: `receive` for what it consumes, `send` for what it
    publishes (internal subjects have both), NATS as the server, every parameter declared."""
    _schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    samples = examples()
    stages = [spec.durable for spec in STREAMS if spec.durable]
    channels: dict[str, typing.Any] = {}
    operations: dict[str, typing.Any] = {}
    messages: dict[str, typing.Any] = {}
    for channel, (address, cls, description) in CHANNELS.items():
        message = cls.__name__
        messages[message] = {
            "name": tag_of(cls),
            "title": tag_of(cls),
            "summary": (cls.__doc__ or description).strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"type": "object", "properties": {"Nats-Msg-Id": {
                "type": "string", "description": "Equal to the CloudEvents id; duplicates are dropped."}}},
            "payload": {"$ref": f"#/components/schemas/{message}"},
            "examples": [{"name": sample.id.replace(":", "-"), "headers": {"Nats-Msg-Id": sample.id},
                          "payload": msgspec.to_builtins(sample)} for sample in samples[channel]],
        }
        channels[channel] = {
            "address": address,
            "description": description,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }
        if "{stage}" in address:
            channels[channel]["parameters"] = {"stage": {
                "description": "The stage that gave up on the message.", "enum": stages}}
        names = [channel]
        if laned(address):  # README "Priority lanes": the bare subject is the interactive lane
            names.append(f"{channel}Lane")
            channels[f"{channel}Lane"] = {
                "address": f"{address}.{{lane}}",
                "description": f"{description} On a priority lane (the bare subject is interactive).",
                "messages": {message: {"$ref": f"#/components/messages/{message}"}},
                "parameters": {"lane": {"description": "Priority lane: interactive work goes first, bulk keeps "
                                                      "a share of every worker's starts.", "enum": list(LANES)}},
            }
        for action, ids in (("receive", RECEIVES), ("send", SENDS)):
            if channel not in ids:
                continue
            for name in names:
                operations[f"{action}{name[0].upper()}{name[1:]}"] = {
                    "action": action,
                    "summary": f"jetmedia {'consumes' if action == 'receive' else 'publishes'} {tag_of(cls)}.",
                    "channel": {"$ref": f"#/channels/{name}"},
                    "messages": [{"$ref": f"#/channels/{name}/messages/{message}"}],
                }
    return {
        "asyncapi": "3.1.0",
        "info": {"title": "jetmedia", "version": __version__,
                 "description": "jetmedia's messages: CloudEvents 1.0 structured JSON on NATS JetStream. "
                                "Operations are jetmedia's: it receives producers' requests on "
                                "jetmedia.upload.* (or a lane of it) and sends its answers on jetmedia.events.>.",
                 "license": {"name": "MIT"},
                 "contact": {"name": "jetmedia", "url": "https://jetmedia.dev"}},
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats",
                              "description": "NATS with JetStream (`jetmedia up` prints the address)."}},
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
