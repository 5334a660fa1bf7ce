"""Transcode bench: the running transcode stage vs the same ffmpeg commands typed by hand.

  direct  `ffmpeg -i source.mkv <the stage's own output arguments> out.mp4` (+ the poster
          command for video) as plain subprocesses on a local file, one after another as a
          script would, and again all at once as the stage runs them: the floor is the faster
  stage   the transcode stage on the real runtime, embedded nats-server + local S3: publish a
          TranscodeRequested, wait for its PartDone; includes the S3 download, the PyAV probes
          (source and every output), the progress pipe and job-record writes, the S3 uploads

Each round runs the three paths back to back on the same input, in the opposite order every other
round, so both sides see the same machine load. Wall time on a shared machine is
noisy, so the table also shows CPU seconds, which other processes' load barely changes: ffmpeg's
(the reaped children's) plus this process's own (for the stage: runtime, probes, S3 client; the
bench waits for the PartDone on a subscription, not by polling). A second table splits each
path's CPU per job: ffmpeg (reaped children), this process, and the embedded S3 server (`weed`)
and nats-server from /proc/<pid>/stat (as bench/export.py does), which the CPU column leaves out;
on 2 cores the encodes saturate, CPU spent anywhere else is wall lost.
Overhead = stage / the faster direct way - 1: of the medians and bests per column,
and the headline: the median over rounds of each round's own ratio (paired). Target: <= 5 %.

    .venv/bin/python bench/transcode.py                    # 20 s 720p video, 180 s stereo audio, 9 rounds
    .venv/bin/python bench/transcode.py --rounds 15 --only audio
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

NO_VACUUM = 24 * 3600  # s: the S3 server compacts nothing mid-run (see bench/export.py)


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


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) of a server we started, from /proc/<pid>/stat."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


SPLIT = ("ffmpeg", "self", "weed", "nats")  # where a job's CPU went (see split_now)
SPLIT_NAMES = {"ffmpeg": "ffmpeg (children)", "self": "this process", "weed": "S3 server (weed)",
               "nats": "nats-server"}


def split_now(servers: dict[str, int | None]) -> dict[str, float]:
    return {"ffmpeg": cpu_seconds(resource.RUSAGE_CHILDREN), "self": cpu_seconds(resource.RUSAGE_SELF),
            **{name: server_cpu(pid) for name, pid in servers.items()}}


def split_since(before: dict[str, float], servers: dict[str, int | None]) -> dict[str, float]:
    after = split_now(servers)
    return {name: after[name] - before[name] for name in SPLIT}


def run_direct(commands: list[list[str]], side_by_side: bool = False) -> tuple[float, float]:
    """One after another, as a script would; or all at once, as the stage runs a job's encodes."""
    started, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    if side_by_side:
        running = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for command in commands]
        if any(proc.wait() for proc in running):
            raise RuntimeError("ffmpeg failed")
    else:
        for command in commands:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


Timing = tuple[float, float]  # wall seconds, CPU seconds (ffmpeg + this process)
PATHS = {"direct": "direct ffmpeg, one after another", "parallel": "direct ffmpeg, side by side",
         "stage": "transcode stage"}


async def bench(cases: list[Case], rounds: int) -> tuple[dict[str, dict[str, list[Timing]]],
                                                          dict[str, dict[str, list[dict[str, float]]]]]:
    from nats.aio.msg import Msg

    from services import stages
    from shared import bus
    from shared import messages as m
    from shared.devstack import EmbeddedStack
    from shared.jobs import new_job
    from shared.runtime import Services, run_stages

    times: dict[str, dict[str, list[Timing]]] = {c.name: {path: [] for path in PATHS} for c in cases}
    splits: dict[str, dict[str, list[dict[str, float]]]] = {c.name: {path: [] for path in PATHS} for c in cases}
    with (tempfile.TemporaryDirectory(prefix="jm-bench-") as tmp,
          EmbeddedStack(Path(tmp), s3_vacuum_interval=NO_VACUUM) as stack):
        servers = {"weed": stack.s3.proc.pid if stack.s3 and stack.s3.proc else None,
                   "nats": stack.nats.proc.pid if stack.nats and stack.nats.proc else None}
        env = {k.removeprefix("JETMEDIA_").lower(): v for k, v in stack.env().items()}
        settings = Settings.from_env({}, **env, bucket="bench", metrics_port=0, data_dir=tmp)
        async with Services.open(settings, name="bench") as services:
            await services.storage.ensure_bucket()
            for case in cases:
                await services.storage.put_bytes(f"sources/{case.source.name}", case.source.read_bytes())
            stopping = asyncio.Event()
            workers = asyncio.create_task(run_stages(services, [stages.load("transcode")], stopping))
            # The stage's PartDone lands in JM_FINALIZE (nobody consumes it here); a core
            # subscription sees the same publish, so the clock stops without polling the server
            # (polling every 20 ms cost the stage a few percent of the 2 cores it shares).
            done: asyncio.Queue[str] = asyncio.Queue()

            async def on_done(msg: Msg) -> None:
                done.put_nowait(m.decode(msg.data).subject or "")

            subscription = await services.nc.subscribe(m.FINALIZE_ASSET, cb=on_done)

            async def through_stage(case: Case, n: int) -> Timing:
                job = f"bench-{case.name}-{n}"
                await services.jobs.create(new_job(job, "asset", status="running", stage="transcode",
                                                   parts_needed=["transcode"], total=1))
                started = time.perf_counter()
                before = split_now(servers)
                await bus.publish(services.js, m.TRANSCODE, m.TranscodeRequested(
                    id=m.derived_id(job, "transcode", job), subject=job,
                    data=m.TranscodeRequestedData(job=job, asset=job, bucket="bench",
                                                  key=f"sources/{case.source.name}"),
                ))
                while await done.get() != job:
                    pass
                wall = time.perf_counter() - started
                split = split_since(before, servers)
                splits[case.name]["stage"].append(split)
                return wall, split["ffmpeg"] + split["self"]

            async def direct(commands: list[list[str]], side_by_side: bool) -> Timing:
                before = split_now(servers)
                wall, _ = await asyncio.to_thread(run_direct, commands, side_by_side)
                split = split_since(before, servers)
                splits[case.name]["parallel" if side_by_side else "direct"].append(split)
                return wall, split["ffmpeg"] + split["self"]

            with tempfile.TemporaryDirectory(prefix="jm-bench-direct-") as out:
                for case in cases:
                    commands = direct_commands(case, settings, Path(out))
                    run_direct(commands)  # warm the page cache and the binary, once
                    for n in range(rounds):
                        runs = times[case.name]
                        # The order flips every round: whichever path runs first meets a machine
                        # that the previous round's last path has just warmed (or loaded).
                        for path in (PATHS if n % 2 == 0 else reversed(PATHS)):
                            if path == "stage":
                                runs[path].append(await through_stage(case, n))
                            else:
                                runs[path].append(await direct(commands, path == "parallel"))
                        print(f"  {case.name} round {n + 1}: " + ", ".join(
                            f"{path} {runs[path][-1][0]:.2f} s ({runs[path][-1][1]:.2f} CPU s)" for path in PATHS),
                            flush=True)
            await subscription.unsubscribe()
            stopping.set()
            await workers
    return times, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="paired rounds (the target needs 9 or more)")
    parser.add_argument("--video-seconds", type=float, default=20.0)
    parser.add_argument("--audio-seconds", type=float, default=180.0)
    parser.add_argument("--cache", default=str(ROOT / ".jetmedia" / "bench-media"))
    parser.add_argument("--only", choices=["video", "audio"], help="run one case")
    args = parser.parse_args()
    cases = [c for c in make_cases(args.video_seconds, args.audio_seconds, Path(args.cache))
             if args.only in (None, c.name)]
    times, splits = asyncio.run(bench(cases, args.rounds))

    load = os.getloadavg()
    print(f"\n{args.rounds} paired rounds each, order flipped every round; load average at the end "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}\n")
    notes: list[str] = []
    print("| case | path | wall median s | wall best s | CPU median s | CPU best s |")
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        stats = {path: [f([t[i] for t in times[case.name][path]]) for i in (0, 1) for f in (statistics.median, min)]
                 for path in PATHS}
        for path, (wall_med, wall_best, cpu_med, cpu_best) in stats.items():
            print(f"| {case.description} | {PATHS[path]} | {wall_med:.2f} | {wall_best:.2f} | {cpu_med:.2f} | "
                  f"{cpu_best:.2f} |")
        # against the faster of the two direct ways, column by column: the stage must beat both
        floor = [min(a, b) for a, b in zip(stats["direct"], stats["parallel"], strict=True)]
        print("| | stage overhead vs the faster direct (of the medians / bests) | "
              + " | ".join(_pct(value, base) for value, base in zip(stats["stage"], floor, strict=True)) + " |")
        # Paired: each round runs the three paths back to back, so their ratio within a round
        # cancels the machine's slow drifts (a shared VM's speed wanders by +-20 % over a minute).
        # Against one way, the faster by median wall: a per-round min of two noisy samples would
        # favour the direct side.
        runs = times[case.name]
        base = min(("direct", "parallel"), key=lambda path: stats[path][0])
        paired = [[stage[i] / direct[i] for stage, direct in zip(runs["stage"], runs[base], strict=True)]
                  for i in (0, 1)]
        print(f"| | **stage overhead, median of the rounds' own ratios** (vs {PATHS[base]}) "
              f"| {_ratio(statistics.median(paired[0]))} "
              f"| (best {_ratio(min(paired[0]))}) | {_ratio(statistics.median(paired[1]))} "
              f"| (best {_ratio(min(paired[1]))}) |")
        notes.append(f"{case.name}: paired wall overhead per round (vs {PATHS[base]}): "
                     + ", ".join(_ratio(r) for r in paired[0]))
    print("\nCPU seconds per job, median over rounds, by process:\n")
    print("| case | path | " + " | ".join(SPLIT_NAMES.values()) + " | all |")
    print("|---|---|" + "---:|" * (len(SPLIT) + 1))
    for case in cases:
        for path in PATHS:
            rows = splits[case.name][path]
            medians = [statistics.median(row[name] for row in rows) for name in SPLIT]
            total = statistics.median(sum(row.values()) for row in rows)
            print(f"| {case.name} | {PATHS[path]} | " + " | ".join(f"{v:.3f}" for v in medians) + f" | {total:.2f} |")
    print()
    for note in notes:
        print(note)


def _pct(value: float, base: float) -> str:
    return _ratio(value / base)


def _ratio(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f} %"


if __name__ == "__main__":
    main()
