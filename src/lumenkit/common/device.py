"""Device selection: `--device auto|cpu|cuda` (auto picks CUDA when present)."""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator

import torch

from lumenkit.common.errors import LumenkitError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' into a torch.device; 'auto' prefers CUDA."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LumenkitError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    raise LumenkitError(f"--device {name!r}: expected one of auto, cpu, cuda, cuda:N")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def add_threads_arg(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--threads", type=int, default=default, help=f"CPU threads for torch (0 = torch's default; default: {default})")


def check_threads(n: int | None, flag: str = "--threads") -> int:
    """A thread count from a flag: an int >= 0 (0 or None = leave torch's setting)."""
    if n is None:
        return 0
    if not isinstance(n, int) or n < 0:
        raise LumenkitError(f"{flag} {n}: must be >= 0 (0 = torch's default)")
    return n


@contextlib.contextmanager
def torch_threads(n: int | None, flag: str = "--threads") -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None/0: leave as is); a negative n is an error."""
    n = check_threads(n, flag)
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_threads_to_load() -> None:
    """One torch thread when the machine is already busy (load average > cores), e.g. parallel tests."""
    try:
        busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        busy = False
    if busy:
        torch.set_num_threads(1)
