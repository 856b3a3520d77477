"""One entry point: `lumenkit <system> <verb> ...` and `lumenkit demo`.

Each system package may have a `cli.py` with `register(subparsers)` (adds `lumenkit <system>` and its
verbs; each verb sets `func=callable(args)`) and optionally `demo_section(outdir, device) -> html`.
User mistakes raise LumenkitError, printed here as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from lumenkit import SYSTEMS, __version__
from lumenkit.common.errors import LumenkitError


class LumenkitArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as for every other user mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def system_cli(name: str) -> ModuleType | None:
    """lumenkit.<name>.cli, or None while that system does not exist yet."""
    modname = f"lumenkit.{name}.cli"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name in (modname, f"lumenkit.{name}"):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = LumenkitArgumentParser(prog="lumenkit", description="Computational image and video synthesis.")
    parser.add_argument("--version", action="version", version=f"lumenkit {__version__}")
    sub = parser.add_subparsers(dest="system", metavar="<system>", required=True)
    from lumenkit import demo

    demo.register(sub)
    for name in SYSTEMS:
        mod = system_cli(name)
        if mod is not None:
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return
    try:
        rc = func(args)
    except LumenkitError as exc:
        print(f"lumenkit: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lumenkit: interrupted (checkpoints and finished outputs are kept; re-run to resume)", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(rc or 0))


if __name__ == "__main__":
    main()
