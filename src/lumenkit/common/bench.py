"""Benchmark plumbing: timing, machine description, and writing a system's table into BENCHMARKS.md.

Each system owns one section of BENCHMARKS.md, delimited by HTML comments, which its benchmark
script rewrites whole (numbers are produced by scripts, never typed).
"""
from __future__ import annotations

import fcntl
import os
import platform
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from lumenkit.common.fileio import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[3]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
SECTION_ORDER = ("diffusion", "t2i", "train-engine", "video", "longexp", "gsir", "gsir-ablation", "gsir-parts", "gsir-normal-floor", "gsir-raster", "gsir-cuda")
HEADER = "# lumenkit benchmarks\n\nEvery number below is written by a script in `benchmarks/` (never typed by hand).\nRe-run with `make bench` or the command shown under each section.\n"


def machine_description() -> str:
    """One line: CPU model, core count, memory, GPU if any, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f"{mem_kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        mem = "? RAM"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def time_call(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Median wall-clock seconds of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], floatfmt: str = "{:.4g}") -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- lumenkit:begin {section} -->", f"<!-- lumenkit:end {section} -->"


def write_section(section: str, body_markdown: str, *, title: str | None = None, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or add) `section` of BENCHMARKS.md with a titled block, stamped with machine and command.

    Sections are kept in SECTION_ORDER. A lock file makes concurrent writers safe.
    """
    begin, end = _markers(section)
    stamp = (
        f"_Machine: {machine_description()}._  \n"
        f"_Command: `{command_line()}`; written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}._\n"
    )
    block = f"{begin}\n## {title or section}\n\n{stamp}\n{body_markdown.strip()}\n{end}"
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else HEADER
        blocks: dict[str, str] = {}
        existing = re.findall(r"<!-- lumenkit:begin (\S+) -->", text)
        for name in set(SECTION_ORDER) | set(existing) | {section}:
            b, e = _markers(name)
            if b in text and e in text:
                blocks[name] = text[text.index(b) : text.index(e) + len(e)]
        blocks[section] = block
        first = min((text.index(_markers(n)[0]) for n in blocks if _markers(n)[0] in text), default=len(text))
        head = text[:first].rstrip() + "\n\n" if first < len(text) else text.rstrip() + "\n\n"
        order = [n for n in SECTION_ORDER if n in blocks] + sorted(n for n in blocks if n not in SECTION_ORDER)
        atomic_write_text(path, head + "\n\n".join(blocks[n] for n in order) + "\n")
    return path
