"""Alignment, frame selection, readers/synthesizer, bad inputs and an end-to-end check vs the truth."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from lumenkit.common.errors import LumenkitError
from lumenkit.common.images import srgb_to_linear, write_image
from lumenkit.longexp.align import aligned_track_lengths, fit_homographies, select_frames, to_gray8, track_direct, track_klt
from lumenkit.longexp.data import SynthConfig, _texture, read_burst, read_synth, synthesize, write_synth
from lumenkit.longexp.evaluate import evaluate_burst, trail_gap


def test_alignment_recovers_known_homography():
    rng = np.random.default_rng(0)
    img = np.clip(_texture(rng, 240, 320, 40), 0, 1)
    H_true = np.array([[1.01, 0.02, 4.0], [-0.015, 0.995, -3.0], [2e-5, -1e-5, 1.0]])  # base -> frame
    frames = [img, cv2.warpPerspective(img, H_true, (320, 240), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)]
    grays = [to_gray8(f) for f in frames]
    tracks = track_klt(grays)
    hs = fit_homographies(track_direct(grays, tracks[:, 0]))
    # hs[1] maps frame 1 -> base, i.e. the inverse of H_true
    corners = np.array([[20, 20], [300, 20], [20, 220], [300, 220], [160, 120]], np.float64)
    mapped = cv2.perspectiveTransform(corners[None], H_true)[0]
    back = cv2.perspectiveTransform(mapped[None], hs[1])[0]
    assert np.abs(back - corners).max() < 0.5


def _tracks_moving(speeds, n_frames, shift=(0.0, 0.0)):
    """Tracks [n, F, 2] that move speeds[i] px per frame along x, plus a camera shift per frame."""
    t = np.arange(n_frames)[None, :, None]
    start = np.stack([np.linspace(10, 50, len(speeds)), np.full(len(speeds), 40.0)], -1)[:, None]
    v = np.stack([np.asarray(speeds, float), np.zeros(len(speeds))], -1)[:, None]
    return (start + t * v + t * np.asarray(shift)[None, None]).astype(np.float32)


def test_frame_selection_stops_at_the_right_frame():
    size = (300, 400)  # diagonal 500 px
    # 100 tracks: 95 static, 5 moving 40 px/frame = 8 % of the diagonal per frame
    speeds = [0.0] * 95 + [40.0] * 5
    n = 8
    tr = _tracks_moving(speeds, n)
    L = aligned_track_lengths(tr, [np.eye(3)] * n, size)
    assert np.allclose(L[-1, :3], [0, 8, 16])
    # foreground rule: 98th percentile reaches 30 %: lengths 8j -> first j with 8j >= 30 is j = 4 -> 5 frames
    assert select_frames(L, 98, 30) == 5
    # the 80th percentile is a static track: never reaches 2.8 % -> all frames
    assert select_frames(L, 80, 2.8) == n
    # 30 % of tracks moving 2 px/frame (0.4 %): 80th pct reaches 2.8 % at j = 7 -> 8 frames; 3 px -> j = 5 -> 6
    assert select_frames(aligned_track_lengths(_tracks_moving([0.0] * 70 + [2.0] * 30, n), [np.eye(3)] * n, size), 80, 2.8) == 8
    assert select_frames(aligned_track_lengths(_tracks_moving([0.0] * 70 + [3.0] * 30, n), [np.eye(3)] * n, size), 80, 2.8) == 6


def test_frame_selection_measures_in_base_frame_space():
    # every track moves only because the camera shifts 20 px per frame: aligned lengths are zero
    n, size = 6, (300, 400)
    tr = _tracks_moving([0.0] * 50, n, shift=(20.0, 0.0))
    hs = [np.array([[1, 0, -20.0 * i], [0, 1, 0], [0, 0, 1]]) for i in range(n)]
    L = aligned_track_lengths(tr, hs, size)
    assert np.abs(L).max() < 1e-4
    assert select_frames(L, 98, 30) == n


def test_synth_truth_is_mean_of_subframes(tmp_path):
    # one sub-frame per interval, no noise, no shake: truth = clip(mean of the burst frames / exposure)
    cfg = SynthConfig(kind="objects", width=96, height=64, frames=4, subframes=1, exposure=0.4, read_noise=0.0, shot_noise=0.0, shake_px=0.0, shake_deg=0.0, seed=3)
    b = synthesize(cfg)
    mean = np.clip(np.mean([srgb_to_linear(f) for f in b.frames], 0) / 0.4, 0, 1)
    assert np.abs(mean - b.truth).max() < 2e-3
    # seeded, and round-trips through disk
    assert np.array_equal(synthesize(cfg).frames[2], b.frames[2])
    write_synth(b, tmp_path / "s")
    back = read_synth(tmp_path / "s")
    assert len(back.frames) == 4 and np.abs(back.truth - b.truth).max() < 1e-3 and back.params["mode"] == "foreground"


def test_read_video_and_folder(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(4)]
    iio.imwrite(tmp_path / "b.mp4", np.stack(frames), fps=10, codec="libx264", macro_block_size=16)
    vid, names = read_burst(tmp_path / "b.mp4")
    assert len(vid) == 4 and vid[0].shape == (32, 48, 3)
    assert abs(float(vid[3].mean()) - 120 / 255) < 0.05
    for i, f in enumerate(frames):
        write_image(tmp_path / "d" / f"f{i:02d}.tif", f.astype(np.uint16) * 257, bit_depth=16)
    fr, names = read_burst(tmp_path / "d")
    assert names == ["f00.tif", "f01.tif", "f02.tif", "f03.tif"] and abs(float(fr[2].mean()) - 80 / 255) < 1e-3


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(LumenkitError, match="no such burst"):
        read_burst(tmp_path / "missing")
    one = tmp_path / "one"
    write_image(one / "a.png", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(LumenkitError, match="at least 2 frames"):
        read_burst(one)
    write_image(one / "b.png", np.zeros((9, 8, 3), np.float32))
    with pytest.raises(LumenkitError, match="differs from the first frame"):
        read_burst(one)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    (bad / "b.png").write_bytes(b"not a png")
    with pytest.raises(LumenkitError, match="not a readable image"):
        read_burst(bad)
    (tmp_path / "v.mp4").write_bytes(b"garbage")
    with pytest.raises(LumenkitError, match="not a readable video"):
        read_burst(tmp_path / "v.mp4")
    with pytest.raises(LumenkitError, match="--kind"):
        SynthConfig(kind="volcano")
    flat = [np.full((64, 64, 3), 0.5, np.float32)] * 3
    from lumenkit.longexp.pipeline import LongExpConfig, run_longexp

    with pytest.raises(LumenkitError, match="trackable features"):
        run_longexp(flat, LongExpConfig())
    with pytest.raises(LumenkitError, match="--mode"):
        LongExpConfig(mode="sideways")
    # the CLI turns them into one line on stderr and exit code 2
    r = subprocess.run([sys.executable, "-m", "lumenkit", "longexp", "run", str(one), "-o", str(tmp_path / "o.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "differs from the first frame" in r.stderr and "Traceback" not in r.stderr


def test_trail_gap_score():
    s = np.zeros((4, 10, 3))
    t = s.copy()
    t[:, 2:8] = 0.5  # a continuous trail
    mask = np.zeros((4, 10), bool)
    mask[:, 2:8] = True
    dots = s.copy()
    dots[:, 2:8:2] = 0.5  # every other pixel: half the trail is missing
    assert trail_gap(t, t, s, mask) == 0.0 and trail_gap(s, t, s, mask) == 1.0
    assert trail_gap(dots, t, s, mask) == pytest.approx(0.5)


def test_end_to_end_beats_aligned_average_on_light_trails():
    b = synthesize(SynthConfig(kind="lights", width=240, height=180, seed=5))
    r = evaluate_burst(b)
    full, aligned = r["full pipeline"], r["aligned average"]
    assert full["psnr"] > aligned["psnr"] + 2.0, r
    assert full["trail_gap"] < aligned["trail_gap"] - 0.1, r
    assert full["trail_psnr"] < full["psnr"]  # the trails are where the error is
    assert full["trail_psnr"] > aligned["trail_psnr"] + 2.0, r
    assert full["psnr"] > r["no soft gamma"]["psnr"], r  # soft gamma matters on clipped lights


def test_cli_synth_and_run_static_shaky_scene(tmp_path):
    """A static scene shot hand-held: the long exposure must equal the (sharp) truth after alignment."""
    from lumenkit.cli import main
    from lumenkit.common.images import read_image, read_image_bit_depth
    from lumenkit.common.metrics import psnr

    def cli(*argv):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        assert e.value.code == 0

    cli("longexp", "synth", "--kind", "shake", "--width", "192", "--height", "144", "--seed", "2", "-o", str(tmp_path / "s"))
    out = tmp_path / "out.png"
    cli("longexp", "run", str(tmp_path / "s" / "burst"), "-o", str(out), "--bit-depth", "16", "--save-intermediates", "--threads", "1")
    assert read_image_bit_depth(out) == 16
    inter = tmp_path / "out_intermediates"
    assert (inter / "m_flow.png").is_file() and (inter / "blur_halfres.png").is_file() and (inter / "flow_00.png").is_file()
    res = read_image(out, keep_alpha=False)
    truth = read_image(tmp_path / "s" / "truth.png", keep_alpha=False)
    naive = np.mean([read_image(f, keep_alpha=False) for f in sorted((tmp_path / "s" / "burst").glob("*.png"))], 0)
    assert psnr(res[8:-8, 8:-8], truth[8:-8, 8:-8]) > 33.0
    assert psnr(res[8:-8, 8:-8], truth[8:-8, 8:-8]) > psnr(naive[8:-8, 8:-8], truth[8:-8, 8:-8]) + 3.0
    # the rendering switches as flags (a static scene: the same quality with any of them)
    out2 = tmp_path / "out2.png"
    cli("longexp", "run", str(tmp_path / "s" / "burst"), "-o", str(out2), "--soft-gamma", "on", "--no-occlusion", "--no-spline", "--threads", "1")
    assert psnr(read_image(out2, keep_alpha=False)[8:-8, 8:-8], truth[8:-8, 8:-8]) > 33.0


def test_half_res_buffers_average_radiance_in_linear_light():
    """A fine checkerboard of black and clipped white: the half-resolution buffers must hold the mean
    radiance 0.5 (area downsampling in linear light; it was averaged sRGB codes, 0.21 linear), and the
    soft-gamma buffer is built at full resolution before downsampling (0.5, not gamma_s(0.5) = 0.25)."""
    from lumenkit.longexp.pipeline import LongExpConfig, prepare

    h, w = 96, 128
    board = ((np.indices((h, w)).sum(0) % 2) == 0).astype(np.float32)
    rng = np.random.default_rng(1)
    tex = np.clip(_texture(rng, h, w, 30), 0, 1)  # corners so that alignment has tracks
    frame = tex.copy()
    frame[24:72, 32:96] = board[24:72, 32:96, None]
    prep = prepare([frame, frame.copy()], LongExpConfig(select_frames=False))
    lin = prep.render_frames[0][:, 16:32, 22:42]  # inside the board at half resolution
    assert abs(float(lin.mean()) - 0.5) < 0.03, float(lin.mean())
    enc = prep.soft_gamma_frames(3.0)[0][:, 16:32, 22:42]
    assert abs(float(enc.mean()) - 0.5) < 0.03, float(enc.mean())


def test_flow_with_prior_recovers_motion_beyond_the_search_range():
    """The temporal prior's candidate: DIS searched around a prior flow and composed with it."""
    from lumenkit.longexp.motion import flow_with_prior

    rng = np.random.default_rng(3)
    img = (np.clip(_texture(rng, 120, 200, 40).mean(-1), 0, 1) * 255).astype(np.uint8)
    shift = 45.0
    a = img[:, 50:170].copy()
    b = img[:, int(50 - shift) : int(170 - shift)].copy()  # content moved +45 px
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    prior = np.zeros((120, 120, 2), np.float32)
    prior[..., 0] = 40.0  # roughly right
    f = flow_with_prior(dis, a, b, prior)
    inner = f[20:-20, 20:-60]  # where b still holds a's content
    assert np.median(np.abs(inner[..., 0] - shift)) < 0.5 and np.median(np.abs(inner[..., 1])) < 0.5


def test_temporal_prior_fixes_a_wrong_match():
    """temporal_prior_refine replaces a flow that warps badly by the constant-velocity candidate."""
    from lumenkit.longexp.motion import temporal_prior_refine

    h, w, v = 40, 160, 18
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

    def layer(x):  # one blurred light at (x, 20)
        return (np.exp(-((xs - x) ** 2 + (ys - 20) ** 2) / (2 * 4.0**2)) * 255).astype(np.uint8)

    layers = [layer(30 + v * k) for k in range(3)]
    good = np.zeros((h, w, 2), np.float32)
    good[..., 0] = v
    wrong = np.zeros((h, w, 2), np.float32)  # pair 1 forward flow lost the light
    fwd, bwd = temporal_prior_refine(layers, [good, wrong], [-good, -good], cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    assert abs(float(fwd[1][20, 30 + v, 0]) - v) < 1.0  # the light at frame 1 moves +v again
    assert np.array_equal(fwd[0], good)  # the first pair has no prior for its forward flow


def test_colour_candidates_see_an_isoluminant_object():
    """A red disc on grey of the same mean: invisible to DIS on the grey image, found on the red channel."""
    from lumenkit.longexp.motion import OpticalFlowPredictor

    h, w, v = 64, 96, 6.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(4)
    tex = 0.2 * (0.9 + 0.2 * cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0))

    def frame(cx):
        disc = np.clip(9.0 - np.hypot(xs - cx, ys - 32) + 0.5, 0, 1)
        img = np.repeat(tex[None], 3, 0)
        col = np.array([0.4, 0.1, 0.1], np.float32)[:, None, None]  # mean 0.2, like the grey background
        return torch.from_numpy(img * (1 - disc) + col * disc)

    frames = [frame(40.0), frame(40.0 + v)]
    for colour, ok in ((False, False), (True, True)):
        m = OpticalFlowPredictor(sweep=False, colour_candidates=colour, highlight_flow=False).predict_burst(frames)[0]
        fx = -float(m.delta_a[0, 30:35, 38:43].mean())  # forward flow at the disc
        assert (abs(fx - v) < 1.0) == ok, (colour, fx)


def test_soft_gamma_auto_is_on_only_for_moving_clipped_highlights():
    """--soft-gamma auto (the default): eq. 9 on for clipping lights, off for bright but unclipped balls,
    and the result is then exactly that of soft gamma forced on / off."""
    from lumenkit.longexp.pipeline import SOFT_GAMMA_MIN_FRACTION, LongExpConfig, finish, moving_clipped_fraction, prepare, with_render

    for kind, expect in (("lights", True), ("objects", False)):
        b = synthesize(SynthConfig(kind=kind, width=160, height=120, seed=1))
        base = LongExpConfig(mode="foreground", select_frames=False, gain=float(b.params["gain"]))
        assert base.render.soft_gamma == "auto"
        prep = prepare(b.frames, base)
        frac = moving_clipped_fraction(prep)
        if expect:
            assert frac > 10 * SOFT_GAMMA_MIN_FRACTION, frac
        else:
            assert frac == 0.0, frac
        res = finish(prep, base)
        assert res.soft_gamma is expect
        assert np.array_equal(res.image, finish(prep, with_render(base, soft_gamma=expect)).image)
    with pytest.raises(LumenkitError, match="soft-gamma"):
        LongExpConfig(render=with_render(LongExpConfig(), soft_gamma="sometimes").render)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    write_synth(synthesize(SynthConfig(kind="lights", width=96, height=64, frames=4, subframes=2, seed=0)), d / "s")
    return d / "s"


@pytest.mark.parametrize("argv,culprit", [
    (["run", "{burst}", "--threads", "-1"], "--threads -1"),
    (["run", "{burst}", "--bit-depth", "16", "-o", "{out}/x.jpg"], "16-bit"),
    (["run", "{burst}", "--mode", "sideways"], "--mode"),
    (["run", "{burst}", "--soft-gamma", "maybe"], "--soft-gamma"),
    (["run", "{burst}", "--max-frames", "1"], "--max-frames 1"),
    (["run", "{burst}", "--gain", "0"], "--gain"),
    (["run", "{burst}", "--render_scale", "2"], "--render_scale"),
    (["run", "{tmp}/empty"], "at least 2 frames, found 0"),
    (["run", "{tmp}/texts"], "at least 2 frames, found 0"),
    (["run", "{tmp}/corrupt.mp4"], "not a readable video"),
    (["run", "{tmp}/missing"], "no such burst"),
    (["synth", "--kind", "bogus", "-o", "{out}/s"], "--kind"),
    (["synth", "--width", "-5", "-o", "{out}/s"], "--width -5"),
    (["synth", "--frames", "1", "-o", "{out}/s"], "--frames 1"),
    (["synth", "--exposure", "nan", "-o", "{out}/s"], "--exposure"),
    (["evaluate", "--kinds", "objects,bogus"], "--kinds"),
    (["evaluate", "--seeds", "0,x"], "--seeds"),
    (["evaluate", "--threads", "-2"], "--threads -2"),
    (["evaluate", "{tmp}/empty"], "not a synthetic burst folder"),
])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, small_scene, capsys, argv, culprit):
    from lumenkit.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    for n in ("a.txt", "b.txt"):
        (tmp_path / "texts" / n).write_text("not a frame")
    (tmp_path / "corrupt.mp4").write_bytes(b"garbage")
    out = tmp_path / "out"
    out.mkdir()
    sub = {"burst": str(small_scene / "burst"), "out": str(out), "tmp": str(tmp_path)}
    argv = [a.format(**sub) for a in argv]
    if argv[0] == "run" and "-o" not in argv:
        argv += ["-o", str(out / "x.png")]
    with pytest.raises(SystemExit) as e:
        main(["longexp", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and culprit in err and "Traceback" not in err, err
    assert list(out.iterdir()) == []


def test_run_flags_build_the_configs(small_scene):
    """The README's switches set the config fields they name; the rest keep LongExpConfig's defaults
    (soft gamma 'auto' included), and the gain comes from scene.json unless given."""
    from lumenkit.cli import build_parser
    from lumenkit.longexp.cli import run_configs
    from lumenkit.longexp.pipeline import LongExpConfig

    burst = str(small_scene / "burst")
    run, cfg = run_configs(build_parser().parse_args(["longexp", "run", burst, "-o", "x.png", "--no-spline", "--no-select", "--a", "0.1"]))
    default = LongExpConfig()
    assert cfg.render.spline is False and cfg.render.ramp is True and cfg.render.soft_gamma == "auto"
    assert cfg.select_frames is False and cfg.a == 0.1 and cfg.b == default.b and cfg.mode == default.mode
    assert cfg.gain == pytest.approx(2.0) and run.bit_depth == 8 and run.threads == 0  # synth's exposure 0.5 -> gain 2
    _, cfg = run_configs(build_parser().parse_args(["longexp", "run", burst, "-o", "x.png", "--no-soft-gamma", "--gain", "1.5", "--no_ramp"]))
    assert cfg.render.soft_gamma is False and cfg.gain == 1.5 and cfg.render.ramp is False
    _, cfg = run_configs(build_parser().parse_args(["longexp", "run", burst, "-o", "x.png", "--soft-gamma", "on"]))
    assert cfg.render.soft_gamma is True


def test_synth_rewrites_a_shorter_burst_without_stale_frames(tmp_path):
    from lumenkit.cli import main

    def synth(frames):
        with pytest.raises(SystemExit) as e:
            main(["longexp", "synth", "--kind", "objects", "--width", "64", "--height", "48", "--frames", str(frames), "--subframes", "1", "-o", str(tmp_path / "s")])
        return e.value.code

    assert synth(5) == 0 and synth(3) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "burst").iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert len(read_synth(tmp_path / "s").frames) == 3
    (tmp_path / "s" / "burst" / "notes.txt").write_text("mine")
    with pytest.raises(LumenkitError, match="did not write"):
        write_synth(synthesize(SynthConfig(width=64, height=48, frames=2, subframes=1)), tmp_path / "s")
    assert (tmp_path / "s" / "burst" / "notes.txt").read_text() == "mine"
