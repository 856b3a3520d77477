"""Atomic file writes and safe weight I/O (safetensors; torch.load only with weights_only=True)."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from lumenkit.common.errors import LumenkitError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` (atomic on POSIX).

    The temporary keeps the final suffix so that writers that dispatch on it (cv2, imageio) work.
    On error the temporary is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get ordinary permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, default: Any = str) -> Path:
    """JSON atomically; `default` converts what json cannot (str by default, e.g. float for NumPy scalars)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a flat {name: tensor} dict atomically; .safetensors (preferred) or .pt/.pth (torch.save)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata=metadata)
        else:
            torch.save(tensors if metadata is None else {"state_dict": tensors, "metadata": metadata}, tmp)
    return path


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights safely: safetensors, or torch.load(weights_only=True) for .pt/.pth/.ckpt/.bin.

    Never unpickles arbitrary objects: a pickle with code in it is refused with a LumenkitError.
    """
    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:  # safetensors raises several types for corrupt headers
            raise LumenkitError(f"{path}: not a valid safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LumenkitError(f"{path}: cannot be loaded as safe weights (weights_only=True): {first}") from None


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path` (an existing folder is
    moved aside first and removed only after the new one is in place). On error `path` is untouched.

        with atomic_dir(out / "unet") as tmp:
            unet.save_pretrained(tmp, safe_serialization=True)
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained_atomic(model, path: str | os.PathLike, **kwargs) -> Path:
    """model.save_pretrained(path) (diffusers / transformers) through a temporary folder and a rename."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, **{"safe_serialization": True, **kwargs})
    return Path(path)
