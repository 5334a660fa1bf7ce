"""Transcode bench: the running transcode stage vs the same ffmpeg commands typed by hand.

  direct  `ffmpeg -i source.mkv <the stage's own output arguments> out.mp4` (+ the poster
          command for video) as plain subprocesses on a local file: the floor
  stage   the transcode stage on the real runtime, embedded nats-server + local S3: publish a
          TranscodeRequested, wait for its PartDone; includes the S3 download, the PyAV probes
          (source and every output), the progress pipe and job-record writes, the S3 uploads

Rounds alternate direct/stage so both see the same machine load. Wall time on a shared machine is
noisy, so the table also shows CPU seconds, which other processes' load barely changes: ffmpeg's
(the reaped children's) plus, for the stage, this process's own (runtime, probes, S3 client, and
the bench's polling, counted against the stage). The local S3 server's and nats-server's CPU are
not included. Overhead = stage / direct - 1, on the median and on the best round. Target: <= 5 %.

    .venv/bin/python bench/transcode.py                    # 20 s 720p video, 180 s stereo audio, 3 rounds
    .venv/bin/python bench/transcode.py --rounds 5 --video-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.transcode import presets  # noqa: E402
from services.transcode.ffmpeg import ffmpeg_exe  # noqa: E402
from services.transcode.probe import probe  # noqa: E402
from services.transcode.samples import lavfi  # noqa: E402
from shared.config import Settings  # noqa: E402


@dataclass
class Case:
    name: str
    container: str
    source: Path
    description: str


def make_cases(video_seconds: float, audio_seconds: float, cache: Path) -> list[Case]:
    cache.mkdir(parents=True, exist_ok=True)
    cases = [
        Case("video", "mkv", cache / f"video-720p-{video_seconds:g}s.mkv",
             f"{video_seconds:g} s 1280x720 30 fps H.264+Opus MKV -> MP4 (x264 veryfast) + poster"),
        Case("audio", "flac", cache / f"audio-{audio_seconds:g}s.flac",
             f"{audio_seconds:g} s 48 kHz FLAC -> MP3 V2 + Opus 128k"),
    ]
    for case, seconds, size in ((cases[0], video_seconds, "1280x720"), (cases[1], audio_seconds, "")):
        if not case.source.exists():
            print(f"making {case.source.name} ...", flush=True)
            extra = {"size": size, "rate": 30} if size else {}
            case.source.write_bytes(lavfi(case.container, seconds, **extra))  # type: ignore[arg-type]
    return cases


def direct_commands(case: Case, settings: Settings, out_dir: Path) -> list[list[str]]:
    """Exactly the stage's ffmpeg arguments, minus its progress pipe, as one would type them."""
    facts = probe(str(case.source), case.source.stat().st_size)
    exe = [ffmpeg_exe(settings.ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error"]
    commands = []
    for preset in presets.choose(facts.media, None, settings):
        commands.append([*exe, "-i", str(case.source), *presets.output_args(preset, facts, settings),
                         "-y", str(out_dir / f"{preset.name}.{preset.ext}")])
    if facts.video is not None:
        before, after = presets.poster_args(facts, settings)
        commands.append([*exe, *before, "-i", str(case.source), *after, "-y", str(out_dir / "poster.jpg")])
    return commands


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_direct(commands: list[list[str]]) -> tuple[float, float]:
    started, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


Timing = tuple[float, float]  # wall seconds, CPU seconds


async def bench(cases: list[Case], rounds: int) -> dict[str, dict[str, list[Timing]]]:
    from services import stages
    from shared import bus
    from shared import messages as m
    from shared.devstack import EmbeddedStack
    from shared.jobs import new_job
    from shared.runtime import Services, run_stages

    times: dict[str, dict[str, list[Timing]]] = {c.name: {"direct": [], "stage": []} for c in cases}
    with tempfile.TemporaryDirectory(prefix="jm-bench-") as tmp, EmbeddedStack(Path(tmp)) as stack:
        env = {k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()}
        settings = Settings.from_env({}, **env, bucket="bench", metrics_port=0, data_dir=tmp)
        async with Services.open(settings, name="bench") as services:
            await services.storage.ensure_bucket()
            for case in cases:
                await services.storage.put_bytes(f"sources/{case.source.name}", case.source.read_bytes())
            stopping = asyncio.Event()
            workers = asyncio.create_task(run_stages(services, [stages.load("transcode")], stopping))
            published = 0

            async def through_stage(case: Case, n: int) -> Timing:
                nonlocal published
                job = f"bench-{case.name}-{n}"
                await services.jobs.create(new_job(job, "asset", status="running", stage="transcode",
                                                   parts_needed=["transcode"], total=1))
                started = time.perf_counter()
                cpu = cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds(resource.RUSAGE_SELF)
                await bus.publish(services.js, m.TRANSCODE, m.TranscodeRequested(
                    id=m.derived_id(job, "transcode", job), subject=job,
                    data=m.TranscodeRequestedData(job=job, asset=job, bucket="bench",
                                                  key=f"sources/{case.source.name}"),
                ))
                published += 1
                # a PartDone (transcode) per request lands in JM_FINALIZE; nobody consumes it here
                while True:
                    if (await services.js.stream_info("JM_FINALIZE")).state.messages >= published:
                        break
                    await asyncio.sleep(0.02)
                wall = time.perf_counter() - started
                return wall, cpu_seconds(resource.RUSAGE_CHILDREN) + cpu_seconds(resource.RUSAGE_SELF) - cpu

            with tempfile.TemporaryDirectory(prefix="jm-bench-direct-") as out:
                for case in cases:
                    commands = direct_commands(case, settings, Path(out))
                    run_direct(commands)  # warm the page cache and the binary, once
                    for n in range(rounds):
                        times[case.name]["direct"].append(await asyncio.to_thread(run_direct, commands))
                        times[case.name]["stage"].append(await through_stage(case, n))
                        (dw, dc), (sw, sc) = times[case.name]["direct"][-1], times[case.name]["stage"][-1]
                        print(f"  {case.name} round {n + 1}: direct {dw:.2f} s ({dc:.2f} CPU s), "
                              f"stage {sw:.2f} s ({sc:.2f} CPU s)", flush=True)
            stopping.set()
            await workers
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--video-seconds", type=float, default=20.0)
    parser.add_argument("--audio-seconds", type=float, default=180.0)
    parser.add_argument("--cache", default=str(ROOT / ".jetmedia" / "bench-media"))
    args = parser.parse_args()
    cases = make_cases(args.video_seconds, args.audio_seconds, Path(args.cache))
    times = asyncio.run(bench(cases, args.rounds))

    print(f"\n{args.rounds} rounds each, alternating\n")
    print("| case | path | wall median s | wall best s | CPU median s | CPU best s |")
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        rows = {label: times[case.name][key] for label, key in (("direct ffmpeg", "direct"),
                                                                 ("transcode stage", "stage"))}
        stats = {label: [f([t[i] for t in values]) for i in (0, 1) for f in (statistics.median, min)]
                 for label, values in rows.items()}
        for label, (wall_med, wall_best, cpu_med, cpu_best) in stats.items():
            print(f"| {case.description} | {label} | {wall_med:.2f} | {wall_best:.2f} | {cpu_med:.2f} | "
                  f"{cpu_best:.2f} |")
        base, stage = stats["direct ffmpeg"], stats["transcode stage"]
        print(f"| | **stage overhead** | {_pct(stage[0], base[0])} | {_pct(stage[1], base[1])} | "
              f"{_pct(stage[2], base[2])} | {_pct(stage[3], base[3])} |")


def _pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %"


if __name__ == "__main__":
    main()
