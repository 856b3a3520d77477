"""`lumenkit demo`: one HTML page showing every system that exists, with images inline and numbers.

Each system contributes the demo section it registers in lumenkit.registry (`fn(outdir, device) -> str`,
HTML starting with an <h2>); a section that fails is reported on the page and makes the command fail.
"""
from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from lumenkit import registry
from lumenkit.registry import SYSTEMS
from lumenkit.common import html
from lumenkit.common.device import add_device_arg, resolve_device
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_text


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the showcase of every system and write an HTML page")
    p.add_argument("--out", default="outputs/demo", help="output folder (index.html goes there)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems to include")
    add_device_arg(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    device = resolve_device(args.device)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        raise LumenkitError(f"--systems: unknown system(s) {', '.join(unknown)} (known: {', '.join(SYSTEMS)})")
    sections, failed = [], []
    intro = (
        "<p>Each section below was produced just now by <code>lumenkit demo</code> on built-in defaults "
        f"(device: {device}). Systems not listed are not built yet.</p>"
    )
    sections.append(intro)
    for name in wanted:
        registry.system_cli(name)  # importing a system's CLI registers its section
        section = registry.DEMO_SECTIONS.get(name)
        if section is None:
            continue
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            body = section(out / name, device)
        except Exception:  # a broken section must not hide the others
            failed.append(name)
            tb = traceback.format_exc()
            print(tb, flush=True)
            body = f"<h2>{name}</h2><pre class='note'>demo failed:\n{html.escape(tb)}</pre>"
        sections.append(body + f"<p class='note'>{name}: {time.perf_counter() - t0:.1f} s</p>")
    index = out / "index.html"
    atomic_write_text(index, html.page("lumenkit demo", sections))
    print(f"[demo] wrote {index.resolve()}")
    if failed:
        print(f"[demo] failed sections: {', '.join(failed)}")
        return 1
    return 0
