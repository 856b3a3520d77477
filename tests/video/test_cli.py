"""`lumenkit video sample | data | train` as real processes, and lumenkit.common.video's writers.

User mistakes: exit 2, one stderr line naming the culprit, no Traceback, nothing written.
"""
from __future__ import annotations

import json

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lumenkit.common.errors import LumenkitError
from lumenkit.common.video import clip_to_uint8, frame_strip, strip_path, write_video
from tests.video.test_pipeline import make_tiny_base

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _lumenkit(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumenkit", "video", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ common.video
def _smooth_clip(f=6, h=33, w=45) -> np.ndarray:
    t, y, x = np.arange(f)[:, None, None], np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    return np.stack([0.5 + 0.3 * np.sin(0.1 * x + 0.2 * t + 0 * y), 0.5 + 0.3 * np.cos(0.08 * y + 0.1 * t + 0 * x),
                     0.4 + 0.2 * np.sin(0.05 * (x + y) + 0.3 * t)], 1).astype(np.float32)  # [F, 3, H, W]


def test_gif_round_trips_exactly_on_few_colours(tmp_path):
    import imageio.v3 as iio

    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [20, 30, 40], [250, 250, 250]], np.uint8)
    clip = cols[np.random.default_rng(0).integers(0, len(cols), (5, 12, 17))]  # uint8 [F, H, W, 3], frames differ
    write_video(tmp_path / "c.gif", clip, fps=5)
    back = iio.imread(tmp_path / "c.gif", index=None)
    assert back.shape == clip.shape and np.array_equal(back[..., :3], clip)
    meta = iio.immeta(tmp_path / "c.gif")
    assert meta["loop"] == 0 and meta["duration"] == 200
    # float [F, 3, H, W] input gives the same file contents
    write_video(tmp_path / "f.gif", clip.transpose(0, 3, 1, 2).astype(np.float32) / 255, fps=5)
    assert np.array_equal(iio.imread(tmp_path / "f.gif", index=None), back)


def test_mp4_is_close_on_a_smooth_clip_and_pads_odd_sizes(tmp_path):
    import imageio.v3 as iio

    clip = _smooth_clip()  # 33 x 45: odd both ways
    write_video(tmp_path / "c.mp4", clip, fps=8)
    back = iio.imread(tmp_path / "c.mp4", index=None)
    assert back.shape == (6, 34, 46, 3)  # padded by one row and one column (edge replicated)
    want = clip_to_uint8(clip).astype(np.float64)
    mse = ((back[:, :33, :45].astype(np.float64) - want) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 30
    edge = ((back[:, 33, :45].astype(np.float64) - want[:, 32]) ** 2).mean()  # the padded row repeats the last one
    assert 10 * np.log10(255**2 / max(edge, 1e-9)) > 30


def test_strip_png_is_pixel_exact(tmp_path):
    from lumenkit.common.images import read_image

    clip = _smooth_clip(4, 10, 7)
    path = write_video(tmp_path / "s.png", clip)
    got = (read_image(path) * 255).round().astype(np.uint8)
    u8 = clip_to_uint8(clip)
    assert got.shape == (10, 28, 3) and np.array_equal(got, np.concatenate(list(u8), axis=1))
    assert np.array_equal(got, frame_strip(clip))
    assert strip_path(tmp_path / "a.mp4") == tmp_path / "a_strip.png"


def test_writer_errors_are_one_line_and_write_nothing(tmp_path):
    import torch

    for bad, match in (("c.avi", "unknown video format"), ("c", "unknown video format")):
        with pytest.raises(LumenkitError, match=match) as e:
            write_video(tmp_path / bad, _smooth_clip())
        assert "\n" not in str(e.value)
    with pytest.raises(LumenkitError, match="clip must be"):
        write_video(tmp_path / "c.gif", np.zeros((4, 4, 3)))
    with pytest.raises(LumenkitError, match="fps"):
        write_video(tmp_path / "c.gif", _smooth_clip(), fps=0)
    assert list(tmp_path.iterdir()) == []
    # torch float input
    write_video(tmp_path / "t.png", torch.from_numpy(_smooth_clip(2, 4, 4)))
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]


# ------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lumenkit.common.images import write_image

    root = tmp_path_factory.mktemp("video_cli")
    paths = make_tiny_base(root)
    ref = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    write_image(root / "ref.png", ref)
    (root / "not_image.png").write_text("this is not a picture")
    paths.update(root=root, ref=str(root / "ref.png"), not_image=str(root / "not_image.png"))
    return paths


MISTAKES = [  # the three, as real processes: (flags, culprit named on the one stderr line)
    (("--ref", "{not_image}"), "not_image.png"),  # a reference that is not an image
    (("--frames", "0"), "--frames 0"),  # frames < 1
    (("--motion_adapter", "{adapter_bad}"), "adapter_bad"),  # layer count does not match the base UNet
]


@pytest.fixture(scope="module")
def processes(tiny, tmp_path_factory):
    """One batch of real `python -m lumenkit video sample` processes, run concurrently (most of their time is
    the imports): a good run writing an .mp4, then the MISTAKES, each pointed at its own output folder."""
    work = tmp_path_factory.mktemp("video_cli_runs")
    common = ["--ref", tiny["ref"], "--prompt", "a red circle", "--frames", 3, "--steps", 2, "--scale", 3, "--seed", 1,
              "--base", tiny["base"], "--motion_adapter", tiny["adapter"], "--device", "cpu"]
    cmds = [["sample", *common, "-o", work / "good" / "c.mp4"]]
    for i, (flags, _) in enumerate(MISTAKES):
        cmds.append(["sample", *common, *[f.format(**tiny) for f in flags], "-o", work / f"bad{i}" / "c.mp4"])
    with ThreadPoolExecutor(len(cmds)) as ex:
        runs = list(ex.map(lambda a: _lumenkit(a, work), cmds))
    return work, runs


def test_sample_writes_mp4_and_gif_with_f_frames(tiny, processes, tmp_path, capsys):
    """The .mp4 from a real process, the .gif from the same flags in this process (same seed: the same clip)."""
    import imageio.v3 as iio

    work, runs = processes
    assert runs[0].returncode == 0 and "Traceback" not in runs[0].stderr, runs[0].stderr
    common = ["--ref", tiny["ref"], "--prompt", "a red circle", "--frames", 3, "--steps", 2, "--scale", 3, "--seed", 1,
              "--base", tiny["base"], "--motion_adapter", tiny["adapter"], "--device", "cpu"]
    rc, out, err = _main(["sample", *common, "-o", tmp_path / "c.gif"], capsys)
    assert rc == 0, err
    assert "c.gif" in out and "c_strip.png" in out
    mp4 = iio.imread(work / "good" / "c.mp4", index=None)
    gif = iio.imread(tmp_path / "c.gif", index=None)[..., :3]
    assert mp4.shape == (3, 32, 32, 3) and gif.shape == (3, 32, 32, 3)
    for strip_file in (work / "good" / "c_strip.png", tmp_path / "c_strip.png"):
        strip = iio.imread(strip_file)
        assert strip.shape == (32, 96, 3)
    # seeded: the same clip. Not to the bit: the CLI drops to one torch thread on a busy machine
    # (fit_threads_to_load), and 1 vs 2 threads round differently, which may move a uint8 level or two
    a = iio.imread(work / "good" / "c_strip.png").astype(int)
    b = iio.imread(tmp_path / "c_strip.png").astype(int)
    assert np.abs(a - b).max() <= 2 and np.mean(a != b) < 0.05
    # the GIF holds the strip's frames up to palette quantisation (the untrained tiny model's frames are noise-like,
    # which yuv420p's 2x2 chroma cannot hold: the mp4's accuracy is tested on a smooth clip above)
    strip = iio.imread(tmp_path / "c_strip.png").astype(int)
    assert np.abs(np.concatenate(list(gif), axis=1).astype(int) - strip).mean() < 8


def test_user_mistakes_exit_2_with_one_line_and_write_nothing(processes):
    work, runs = processes
    for i, ((flags, culprit), r) in enumerate(zip(MISTAKES, runs[1:])):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (flags, r.stderr)
        assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in r.stderr, (flags, r.stderr)
        assert not (work / f"bad{i}").exists()
    assert "motion_layers_per_block" in runs[3].stderr


def _main(argv, capsys) -> tuple[int, str, str]:
    """lumenkit.cli.main in this process (the imports are paid once): (exit code, stdout, stderr)."""
    from lumenkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["video", *map(str, argv)])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_more_mistakes_in_process(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok = ["--prompt", "a red circle", "--steps", 1, "--frames", 2, "--base", tiny["base"], "--device", "cpu"]
    cases = [
        (["sample", "--ref", "missing.png", *ok, "-o", "o/c.mp4"], "missing.png"),
        (["sample", "--ref", tiny["ref"], *ok, "-o", "o/c.avi"], "--out"),
        (["sample", "--ref", tiny["ref"], *ok, "--scale", -1, "-o", "o/c.mp4"], "--scale"),
        (["sample", "--ref", tiny["ref"], *ok, "--steps", 0, "-o", "o/c.mp4"], "--steps 0"),
        (["sample", "--ref", tiny["ref"], *ok, "--frames", 40, "-o", "o/c.mp4"], "--frames 40"),
        (["sample", "--ref", tiny["ref"], *ok, "--weights", "w.safetensors", "-o", "o/c.mp4"], "w.safetensors"),
        (["sample", "--ref", tiny["ref"], *ok, "--sampler", "heun", "-o", "o/c.mp4"], "heun"),
        (["sample", "--ref", tiny["ref"], *ok, "--model", "nowhere", "-o", "o/c.mp4"], "nowhere"),
        (["train", "--out", "o", "--steps", 0], "--steps 0"),
        (["train", "--steps", 3], "--out"),
        (["data", "-o", "o", "--n", 0], "--n 0"),
    ]
    for cmd, culprit in cases:
        rc, _, err = _main(cmd, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and culprit in lines[0], (cmd, err)
    assert list(tmp_path.iterdir()) == []


def test_data_verb_and_train_help(tmp_path, capsys):
    rc, out, _ = _main(["data", "-o", tmp_path / "d", "--n", 1, "--frames", 2, "--size", 32], capsys)
    assert rc == 0 and (tmp_path / "d" / "metadata.jsonl").is_file() and (tmp_path / "d" / "00000" / "reference.png").is_file()
    rc, out, _ = _main(["train", "--help"], capsys)
    assert rc == 0 and "--beta" in out and "--out" in out and "lumenkit video train" in out


def test_demo_section_html(tiny, tmp_path, monkeypatch):
    """The demo section on the tiny model (the shipped one takes ~20 s): reference, prompt, animated GIFs inline,
    the same model without the reference, a real clip, and the page says no trained weights are installed."""
    from lumenkit.video import cli
    from lumenkit.video import pipeline as P

    monkeypatch.setattr(P, "load_shipped", lambda device, pisa=True: P.VideoMakerPipeline.from_pretrained(tiny["base"], tiny["adapter"]))
    monkeypatch.setattr(cli, "DEMO_STEPS", 1)
    monkeypatch.setattr(cli, "DEMO_FRAMES", 2)
    page = cli.demo_section(tmp_path / "demo", "cpu")
    assert page.startswith("<h2>video")
    assert "No trained VideoMaker weights" in page and "prompt:" in page and "no reference" in page
    assert page.count("data:image/gif;base64,") >= 3 and page.count("data:image/png;base64,") >= 1
    assert (tmp_path / "demo" / "video_0.gif").is_file() and (tmp_path / "demo" / "video_0_strip.png").is_file()


def test_evaluate_verb_writes_the_row_and_the_real_clip_ceiling(tiny, tmp_path, capsys, monkeypatch):
    """`video evaluate` on the tiny model (in place of the shipped one) with the shipped instruments: the JSON
    has the table's columns; the real-clip row is read right (the instruments see the truth of unseen clips),
    while the untrained tiny model's clips are not recognised."""
    from lumenkit.video import pipeline as P
    from lumenkit.video.evaluate import SCORE_KEYS

    monkeypatch.setattr(P, "load_shipped", lambda device, pisa=True: P.VideoMakerPipeline.from_pretrained(tiny["base"], tiny["adapter"]))
    out = tmp_path / "s.json"
    rc, stdout, _ = _main(["evaluate", "--clips", 8, "--steps", 1, "--scale", 1, "-o", out], capsys)
    assert rc == 0 and f"wrote {out}" in stdout
    res = json.loads(out.read_text())
    assert set(SCORE_KEYS) <= set(res["scores"]) and res["sample_s_per_clip"] > 0
    assert res["real_clip_scores"]["identity_top1"] >= 0.75 and res["real_clip_scores"]["motion_accuracy"] >= 0.75
    assert res["scores"]["identity_top1"] <= 0.25
