"""One entry point: `lumenkit <system> <verb> ...` and `lumenkit demo`.

Each system package may have a `cli.py` with `register(subparsers)` (adds `lumenkit <system>` and its
verbs; each verb sets `func=callable(args)`); lumenkit.registry finds them.
User mistakes -- LumenkitError, and the ValueError / FileNotFoundError / OSError / JSON errors that
config validation and file reading raise -- are printed here as one line with exit code 2; a traceback
only for real bugs, or for everything with `--debug`.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from lumenkit import __version__, demo
from lumenkit import registry
from lumenkit.common.errors import LumenkitError


class LumenkitArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as for every other user mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = LumenkitArgumentParser(prog="lumenkit", description="Computational image and video synthesis.")
    parser.add_argument("--version", action="version", version=f"lumenkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="system", metavar="<system>", required=True)
    demo.register(sub)
    for mod in registry.system_clis().values():
        mod.register(sub)
    return parser


# What a user's mistake raises: bad values (config validation), missing or unreadable files, bad JSON.
USER_ERRORS = (LumenkitError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               OSError, json.JSONDecodeError, UnicodeDecodeError)


def one_line(exc: BaseException) -> str:
    """The error as one line: its message (first line), naming the file for OSErrors."""
    if isinstance(exc, OSError) and not isinstance(exc, LumenkitError) and exc.filename is not None:
        msg = f"{exc.filename}: {exc.strerror or exc}"
    else:
        msg = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([*argv, "--help"])
        return
    try:
        rc = func(args)
    except KeyboardInterrupt:
        print("lumenkit: interrupted (checkpoints and finished outputs are kept; re-run to resume)", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as exc:
        if args.debug:
            traceback.print_exc()
        print(f"lumenkit: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(rc or 0))


if __name__ == "__main__":
    main()
