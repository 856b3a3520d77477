import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from lumenkit.common import bench, images, metrics
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_path, load_state_dict, save_state_dict


def test_png16_roundtrip_exact_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65536, size=(7, 5, 3), dtype=np.uint16)
    p = images.write_image(tmp_path / "a.png", img, metadata={"prompt": "a red circle", "seed": "3"})
    back = images.read_image(p)
    assert images.read_image_bit_depth(p) == 16
    np.testing.assert_array_equal((back * 65535).round().astype(np.uint16), img)
    assert images.read_png_text(p) == {"prompt": "a red circle", "seed": "3"}


def test_png8_rgba_channel_order(tmp_path):
    img = np.zeros((2, 2, 4), np.float32)
    img[..., 0] = 1.0  # pure red
    img[..., 3] = 0.5
    back = images.read_image(images.write_image(tmp_path / "r.png", img))
    np.testing.assert_allclose(back[0, 0], [1, 0, 0, 128 / 255], atol=1e-6)


def test_hdr_roundtrip_within_rgbe_precision(tmp_path):
    rng = np.random.default_rng(1)
    img = (rng.random((8, 9, 3)) * 50).astype(np.float32) + 0.01
    back = images.read_hdr(images.write_hdr(tmp_path / "env.hdr", img))
    # RGBE keeps 8 mantissa bits relative to the largest channel of each pixel
    assert np.all(np.abs(back - img) <= img.max(axis=2, keepdims=True) / 128 + 1e-6)


def test_exr_roundtrip_when_opencv_allows(tmp_path):
    img = np.linspace(0, 10, 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    try:
        p = images.write_image(tmp_path / "a.exr", img)
    except LumenkitError:
        pytest.skip("this OpenCV build has no EXR codec")
    np.testing.assert_allclose(images.read_hdr(p), img, rtol=1e-3)


def test_srgb_linear_inverse_and_known_values():
    x = np.linspace(0, 1, 1001, dtype=np.float64)
    np.testing.assert_allclose(images.linear_to_srgb(images.srgb_to_linear(x)), x, atol=1e-12)
    np.testing.assert_allclose(images.srgb_to_linear(np.array([0.5])), [0.21404114], atol=1e-7)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(images.srgb_to_linear(t), torch.from_numpy(images.srgb_to_linear(t.numpy())))


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(LumenkitError, match="missing.png"):
        images.read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(LumenkitError, match="bad.png"):
        images.read_image(bad)


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("x")
    mode = (tmp_path / "new.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~_current_umask(), oct(mode)


def _current_umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the protocol of the refused pickle
def test_weights_roundtrip_and_pickle_refused(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    for name in ("m.safetensors", "m.pt"):
        back = load_state_dict(save_state_dict(tmp_path / name, sd))
        for k in sd:
            torch.testing.assert_close(back[k], sd[k])
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(LumenkitError, match="evil.ckpt"):
        load_state_dict(evil)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LumenkitError, match="junk.safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_psnr_closed_form_and_ssim_identity():
    a = np.zeros((16, 16, 3))
    b = a + 0.1  # mse 0.01 -> 20 dB
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim(x, rng.random((32, 32, 3))) < 0.1


def _window_sums(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Plain loop: sum of w * x over every full window inside x [H, W] ('valid')."""
    k = w.shape[0]
    return np.array([[np.sum(w * x[i:i + k, j:j + k]) for j in range(x.shape[1] - k + 1)] for i in range(x.shape[0] - k + 1)])


def test_ssim_metric_against_a_windowed_loop():
    """metrics.ssim = mean over channels and full 11x11 Gaussian windows of Wang et al.'s SSIM, computed
    here window by window with the 2-D window (the metric runs it as two 1-D passes)."""
    rng = np.random.default_rng(1)
    a = rng.random((20, 23, 2))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(2):
        x, y = a[..., c], b[..., c]
        mx, my = _window_sums(x, w), _window_sums(y, w)
        vx, vy, cxy = _window_sums(x * x, w) - mx**2, _window_sums(y * y, w) - my**2, _window_sums(x * y, w) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert metrics.ssim(a, b) == pytest.approx(float(np.mean(vals)), rel=1e-12)


def test_ssim_map_same_padding_closed_form():
    """The training loss's SSIM (3DGS: zero 'same' padding) on two constant images a, b: at each pixel the
    window mass f inside the image gives mu = a f, var = a^2 f (1 - f), cov = a b f (1 - f)."""
    import torch

    a, b, H, W = 0.5, 0.7, 24, 30
    x = torch.full((3, H, W), a, dtype=torch.float64)
    y = torch.full((3, H, W), b, dtype=torch.float64)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def mass(n):  # fraction of the 1-D window inside [0, n) for each centre
        return np.array([sum(g[k] for k in range(11) if 0 <= i + k - 5 < n) for i in range(n)])

    f = mass(H)[:, None] * mass(W)[None, :]
    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = a * f, b * f
    s11, s22, s12 = a * a * f * (1 - f), b * b * f * (1 - f), a * b * f * (1 - f)
    expect = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    got = metrics.ssim_map(x, y)
    assert got.shape == (1, 3, H, W)
    np.testing.assert_allclose(got[0, 0].numpy(), expect, rtol=1e-9)
    assert float(metrics.ssim_map(x, x).mean()) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="padding"):
        metrics.ssim_map(x, y, padding="reflect")


def test_benchmarks_md_sections(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    bench.write_section("longexp", "| a |\n|---|\n| 1 |", path=md)
    bench.write_section("diffusion", "first", path=md)
    bench.write_section("diffusion", "second", path=md)
    bench.write_section("t2i-extra", "kept", path=md)  # a name outside SECTION_ORDER survives later writes
    bench.write_section("gsir", "g", path=md)
    text = md.read_text()
    assert "second" in text and "first" not in text and "kept" in text
    assert text.index("lumenkit:begin diffusion") < text.index("lumenkit:begin longexp")
    assert "Machine:" in text


def test_cli_user_error_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "lumenkit", "demo", "--systems", "nope"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lumenkit", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_read_hdr_refuses_nan_inf_negative_and_non_latlong_maps(tmp_path):
    """Each bad pixel counted once (however many of its channels are bad), by kind; a lat-long map must be 2:1."""
    env = np.full((4, 8, 3), 0.5, np.float32)
    ok = images.write_hdr(tmp_path / "ok.exr", env)
    np.testing.assert_array_equal(images.read_hdr(ok, latlong=True), env)
    bad = env.copy()
    bad[0, 0] = np.nan  # one pixel, three channels
    bad[1, 2, 0], bad[1, 3, 2] = np.inf, -np.inf
    bad[3, 7, 1] = -0.25
    p = images.write_hdr(tmp_path / "bad.exr", bad)
    with pytest.raises(LumenkitError, match=r"^\S*bad\.exr: 4 of 32 pixels are not finite radiance >= 0 \(1 NaN, 2 Inf, 2 negative\)$"):
        images.read_hdr(p)
    neg = env.copy()
    neg[2, 5] = -1
    with pytest.raises(LumenkitError, match=r"neg\.exr: 1 of 32 pixels .* \(1 negative\)"):
        images.read_hdr(images.write_hdr(tmp_path / "neg.exr", neg))
    square = images.write_hdr(tmp_path / "square.hdr", np.ones((8, 8, 3), np.float32))
    assert images.read_hdr(square).shape == (8, 8, 3)  # any shape as an HDR image
    with pytest.raises(LumenkitError, match=r"square\.hdr: 8x8 px is not a lat-long environment map \(width must be 2x the height\)"):
        images.read_hdr(square, latlong=True)


def test_a_broken_png_is_one_error_and_no_opencv_log_lines(tmp_path, capfd):
    """A file with PNG's signature and broken chunks: OpenCV's decoder logs WARN/ERROR lines on stderr by
    itself, which made the CLI's one-line error three lines; read_image raises its own error only."""
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(LumenkitError, match="broken.png: not a readable image"):
        images.read_image(bad)
    assert capfd.readouterr().err == ""
