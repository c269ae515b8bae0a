"""Profile the gateway under one of the bench's loads with py-spy; print where the time goes.

Starts the sandboxes and a gateway exactly as bench/run.py does (its functions, imported), with
the cache off (``--cache memory`` for the cached path; ``--scenario cached-single`` implies it),
checks the scenario's query answers, warms up, then runs wrk with that scenario's bodies for
``--seconds`` while ``py-spy record`` samples the gateway process. The recording goes to
bench/out/ as collapsed stacks (``--format raw``, the default) or a speedscope file
(``--format speedscope``, open it at https://www.speedscope.app); either way this script then
prints the top functions by self time (the sampled frame itself) and by total time (the frame
anywhere on the stack), as percentages of the samples, computed from that file. The summary is
also written next to the recording.

    .venv/bin/python bench/profile.py --scenario list --seconds 15
    .venv/bin/python bench/profile.py --scenario cached-single --format speedscope

Needs py-spy, a bench-only tool that is in no dependency list: ``.venv/bin/pip install py-spy``.
py-spy reads another process's memory, so it needs root or ptrace permission (as a normal user
on Linux: ``sudo``, or ``kernel.yama.ptrace_scope = 0``, or CAP_SYS_PTRACE). Also needs wrk,
like bench/run.py. Scenarios: ``single`` (100 organizations in rotation), ``list`` (100
PlanetScale organizations), ``dashboard`` (refused while the shipped max_upstream_calls is under
its estimate), ``cached-single``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    BENCH,
    BIN,
    GATEWAY_KEY,
    check,
    gateway,
    list_nodes,
    sandboxes,
    workloads,
    wrk,
)

SCENARIOS = {
    # name: (workload of bench.run.workloads, cache backend when --cache is not given)
    "single": ("single", "none"),
    "list": ("list", "none"),
    "dashboard": ("dashboard", "none"),
    "cached-single": ("single", "memory"),
}

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<where>[^()]*)\)$")


def py_spy() -> str | None:
    local = BIN / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# ---------------------------------------------------------------------------- stacks


def collapsed_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's ``raw`` output: one ``frame;frame;...;leaf count`` line per distinct stack,
    outermost frame first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def speedscope_stacks(path: Path) -> Counter[tuple[str, ...]]:
    """The same from a speedscope file (sampled profiles, one per thread; each sample's stack
    root first). Every sample counts once: its weight is the sampling interval in seconds."""
    data = json.loads(path.read_text())
    frames = [
        f"{f['name']} ({f.get('file', '?')}{':' + str(f['line']) if f.get('line') else ''})"
        for f in data["shared"]["frames"]
    ]
    stacks: Counter[tuple[str, ...]] = Counter()
    for profile in data["profiles"]:
        if profile.get("type") != "sampled":
            continue
        for sample in profile["samples"]:
            stacks[tuple(frames[i] for i in sample)] += 1
    return stacks


def top_functions(
    stacks: Counter[tuple[str, ...]], count: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top by self, top by total): self counts the innermost frame of each sample,
    total counts every function on the stack once per sample (recursion is not counted twice)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for stack, n in stacks.items():
        if not stack:
            continue
        samples += n
        own[stack[-1]] += n
        for frame in set(stack):
            total[frame] += n
    return samples, own.most_common(count), total.most_common(count)


def short(frame: str, width: int = 110) -> str:
    """``function (path/to/file.py:12)`` with the path cut to its last three parts."""
    m = _FRAME.match(frame)
    if m:
        where = "/".join(m["where"].split("/")[-3:])
        frame = f"{m['name']} ({where})"
    return frame if len(frame) <= width else frame[: width - 1] + "…"


def summary(stacks: Counter[tuple[str, ...]], count: int) -> str:
    samples, own, total = top_functions(stacks, count)
    lines = [f"{samples} samples"]
    for title, rows in (("self", own), ("total", total)):
        lines += ["", f"top {len(rows)} functions by {title} time (% of samples):"]
        lines += [f"{n / max(1, samples):7.2%} {n:7d}  {short(frame)}" for frame, n in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="list")
    parser.add_argument("--seconds", type=int, default=15, help="recorded seconds of load")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before recording")
    parser.add_argument(
        "--cache", choices=("none", "memory"), help="cache backend (default: the scenario's)"
    )
    parser.add_argument("--format", choices=("raw", "speedscope"), default="raw")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="also sample idle (waiting) frames")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--stacks", type=Path, help="only summarise this existing raw/speedscope recording"
    )
    args = parser.parse_args()

    if args.stacks is not None:
        print(summary(load(args.stacks), args.top))
        return 0
    spy = py_spy()
    if spy is None:
        print("profile: py-spy is not installed (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("profile: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    workload, default_cache = SCENARIOS[args.scenario]
    cache = args.cache or default_cache
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    base = out / f"profile-{args.scenario}-{cache}-{stamp}"
    recording = base.with_suffix(".txt" if args.format == "raw" else ".speedscope.json")
    tmp = Path(tempfile.mkdtemp(prefix="orggraph-profile-"))

    with sandboxes(args.orgs) as sb:
        body = workloads(sb)[workload]
        config = sb.config(tmp / f"{args.scenario}.toml", cache=cache)
        with gateway(config) as (url, pid):
            expect = list_nodes if workload == "list" else None
            for one in [body] if isinstance(body, str) else body:
                refused = check(url, one, expect=expect)
                if refused:
                    print(f"profile: the {args.scenario} query is {refused}", file=sys.stderr)
                    return 1
            auth = f"Bearer {GATEWAY_KEY}"
            load_kw: dict[str, Any] = {"connections": args.connections, "auth": auth}
            if args.warmup > 0:
                wrk(url, body, seconds=args.warmup, **load_kw)
            print(
                f"profile: {args.scenario}, cache {cache}, gateway pid {pid}; "
                f"recording {args.seconds} s",
                flush=True,
            )
            figures: dict[str, Any] = {}
            # wrk runs a second longer than the recording, which starts once wrk has.
            loader = threading.Thread(
                target=lambda: figures.update(wrk(url, body, seconds=args.seconds + 1, **load_kw))
            )
            loader.start()
            time.sleep(0.3)
            command = [spy, "record", "--pid", str(pid), "--duration", str(args.seconds)]
            command += ["--rate", str(args.rate), "--format", args.format, "--function"]
            command += ["--output", str(recording)] + (["--idle"] if args.idle else [])
            spy_run = subprocess.run(command, capture_output=True, text=True)
            loader.join()
            if spy_run.returncode != 0 or not recording.exists():
                print("profile: py-spy failed:\n" + spy_run.stderr[-2000:], file=sys.stderr)
                return 1

    text = (
        f"{args.scenario}, cache {cache}: wrk -c{args.connections} "
        f"{figures.get('rps', float('nan')):.0f} requests/s, p50 "
        f"{figures.get('p50_ms', float('nan')):.2f} ms, p99 "
        f"{figures.get('p99_ms', float('nan')):.2f} ms (while sampled at {args.rate} Hz)\n"
        f"recording: {recording.relative_to(BENCH.parent)}\n" + summary(load(recording), args.top)
    )
    base.with_name(base.name + "-top.txt").write_text(text + "\n")
    print(text)
    return 0


def load(path: Path) -> Counter[tuple[str, ...]]:
    return speedscope_stacks(path) if path.name.endswith(".json") else collapsed_stacks(path)


if __name__ == "__main__":
    raise SystemExit(main())
