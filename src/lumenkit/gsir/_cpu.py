"""The C++/OpenMP CPU backend: build-on-first-use loader of ``csrc/`` and its autograd glue.

``preprocess_cpu`` is `_torch_impl.project_gaussians` + `sh.sh_to_color` fused in C++
(``csrc/preprocess_cpu.cpp``); ``blend_cpu`` is 3DGS's tile blending forward and backward
(``csrc/rasterize_cpu.cpp``), float32 and float64. Built by `torch.utils.cpp_extension.load` (about a
minute) and cached under ``$LUMENKIT_EXT_DIR`` (default ``~/.cache/lumenkit/torch_extensions``).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
from pathlib import Path

import torch
from torch import Tensor

from lumenkit.gsir._torch_impl import Projected
from lumenkit.gsir.camera import Camera

_EXT = None
_CSRC = Path(__file__).parent / "csrc"


def extension_dir() -> Path:
    """Build/cache folder of the C++ extension: $LUMENKIT_EXT_DIR or ~/.cache/lumenkit/torch_extensions,
    one subfolder per torch version and source folder (two checkouts sharing one folder would make
    ninja rebuild on every switch, as the sources' paths differ)."""
    root = os.environ.get("LUMENKIT_EXT_DIR") or str(Path.home() / ".cache" / "lumenkit" / "torch_extensions")
    source_key = hashlib.sha1(str(_CSRC.resolve()).encode()).hexdigest()[:8]
    return Path(root) / f"gsir_cpu_torch{torch.__version__.replace('+', '_')}_{source_key}"



def load_extension():
    """Build on first use (about a minute; cached, rebuilt when the source changes) and load the
    C++/OpenMP rasterizer in ``csrc/rasterize_cpu.cpp``."""
    global _EXT
    if _EXT is None:
        from torch.utils.cpp_extension import load

        build_dir = extension_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        # rasterize_cpu.cpp #includes the other sources: hash them all so any edit triggers a rebuild
        digest = hashlib.sha1(b"".join(f.read_bytes() for f in sorted(_CSRC.glob("*.cpp")))).hexdigest()[:12]
        if not any(build_dir.glob("lumenkit_gsir_cpu*.so")):
            print(f"lumenkit.gsir: building the C++ rasterizer in {build_dir} (first use, about a minute)", file=sys.stderr)
        with open(build_dir / "lumenkit.flock", "w") as flock:
            # torch's own build lock is a plain file that a killed build leaves behind, after which every
            # later load waits forever. An flock is dropped by the kernel when its process dies: holding it,
            # no other lumenkit process is building here, so a leftover torch lock file is stale.
            fcntl.flock(flock, fcntl.LOCK_EX)
            (build_dir / "lock").unlink(missing_ok=True)
            _EXT = load(
                name="lumenkit_gsir_cpu",
                sources=[str(_CSRC / "rasterize_cpu.cpp")],
                extra_cflags=["-O3", "-fopenmp", f"-DLUMENKIT_CSRC_HASH={digest}"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=False,
            )
    return _EXT


class _BlendCPU(torch.autograd.Function):
    """Autograd wrapper of the C++ forward / backward (3DGS's renderCUDA pair, on the CPU)."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, channels, order, rects, width, height, want_argmax, n_alpha=None):
        ext = load_extension()
        m, c, o, ch = (t.detach().contiguous() for t in (means2d, conics, opacities, channels))
        out, final_T, n_contrib, argmax, offsets, ids, gstart, by_gauss = ext.blend_forward(
            m, c, o, ch, order, rects, width, height, want_argmax
        )
        ctx.save_for_backward(m, c, o, ch, offsets, ids, final_T, n_contrib, order, gstart, by_gauss)
        ctx.size = (width, height)
        ctx.n_alpha = ch.shape[1] if n_alpha is None else max(1, min(int(n_alpha), ch.shape[1]))
        ctx.mark_non_differentiable(argmax)
        return out, argmax

    @staticmethod
    def backward(ctx, grad_out, _grad_argmax):
        m, c, o, ch, offsets, ids, final_T, n_contrib, order, gstart, by_gauss = ctx.saved_tensors
        W, H = ctx.size
        # channels past n_alpha: gradient to the channel values only (GS-IR's PBR maps), in the same pass
        g_m, g_c, g_o, g_ch = load_extension().blend_backward(
            m, c, o, ch, offsets, ids, W, H, final_T, n_contrib, grad_out.contiguous(), order, gstart, by_gauss, ctx.n_alpha
        )
        return g_m, g_c, g_o, g_ch, None, None, None, None, None, None


class _PreprocessCPU(torch.autograd.Function):
    """Autograd wrapper of the fused C++ projection + SH colour (same maths as `project_gaussians`
    and `sh_to_color`)."""

    @staticmethod
    def forward(ctx, means, quats, scales, sh, degree, camera):
        ext = load_extension()
        m, q, sc = (t.detach().contiguous() for t in (means, quats, scales))
        shd = sh.detach().contiguous() if sh is not None else m.new_zeros(0)
        campos = camera.camera_center.to(m)
        args = (campos, camera.viewmat.detach(), camera.K.detach(), camera.width, camera.height, camera.near, camera.far)
        means2d, conics, depths, radii, rects, colors = ext.preprocess_forward(m, q, sc, shd, degree, *args)
        ctx.save_for_backward(m, q, sc, shd, radii)
        ctx.args, ctx.degree, ctx.has_sh = args, degree, sh is not None
        ctx.mark_non_differentiable(radii, rects)
        return means2d, conics, depths, radii, rects, colors

    @staticmethod
    def backward(ctx, g_m2d, g_con, g_dep, _g_radii, _g_rects, g_col):
        m, q, sc, shd, radii = ctx.saved_tensors
        z = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
        g_col = z(g_col, m.new_zeros(m.shape[0], 3)) if ctx.has_sh else m.new_zeros(0)
        d_m, d_q, d_s, d_sh = load_extension().preprocess_backward(
            m, q, sc, shd, ctx.degree, *ctx.args, radii, z(g_m2d, m[:, :2]), z(g_con, m), z(g_dep, m[:, 0]), g_col
        )
        return d_m, d_q, d_s, (d_sh if ctx.has_sh else None), None, None


def preprocess_cpu(means: Tensor, quats: Tensor, scales: Tensor, camera: Camera, sh: Tensor | None = None,
                   sh_degree: int = 0) -> tuple[Projected, Tensor | None]:
    """`project_gaussians` (+ `sh_to_color` when sh is given) fused in C++ (CPU tensors, float32/64).
    Returns (Projected, colors [N, 3] or None)."""
    means2d, conics, depths, radii, rects, colors = _PreprocessCPU.apply(means, quats, scales, sh, sh_degree, camera)
    return Projected(means2d, conics, depths, radii, rects), (colors if sh is not None else None)


def blend_cpu(means2d, conics, opacities, channels, order, rects, width, height, want_argmax=False, n_alpha=None):
    """C++/OpenMP blending (float32 or float64 CPU tensors). n_alpha: only the first n_alpha channels
    back-propagate to means2d / conics / opacities (default: all)."""
    out, argmax = _BlendCPU.apply(means2d, conics, opacities, channels, order, rects, width, height, want_argmax, n_alpha)
    return out, (argmax if want_argmax else None)
