"""Where the systems are found: their CLI modules and their demo sections.

Each system package may have a `cli.py` with `register(subparsers)` (adds `lumenkit <system>` and its
verbs) and a demo section registered with the decorator below:

    @registry.demo_section("gsir")
    def demo_section(outdir: Path, device) -> str: ...   # HTML starting with an <h2>

`lumenkit.cli` and `lumenkit.demo` both read this module, and it imports neither: no import cycle.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Callable

SYSTEMS = ("diffusion", "t2i", "video", "longexp", "gsir")
DemoSection = Callable[[Path, object], str]
DEMO_SECTIONS: dict[str, DemoSection] = {}


def demo_section(system: str) -> Callable[[DemoSection], DemoSection]:
    """Register `fn(outdir, device) -> html` as the demo section of `system`."""
    if system not in SYSTEMS:
        raise ValueError(f"demo_section: unknown system {system!r} (known: {', '.join(SYSTEMS)})")

    def register(fn: DemoSection) -> DemoSection:
        DEMO_SECTIONS[system] = fn
        return fn

    return register


def system_cli(name: str) -> ModuleType | None:
    """lumenkit.<name>.cli (importing it registers its demo section), or None while that system does not exist yet."""
    modname = f"lumenkit.{name}.cli"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name in (modname, f"lumenkit.{name}"):
            return None
        raise


def system_clis() -> dict[str, ModuleType]:
    """Every existing system's CLI module, in SYSTEMS order."""
    return {name: mod for name in SYSTEMS if (mod := system_cli(name)) is not None}
