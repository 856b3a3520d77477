"""One table of user mistakes across every system and verb, each run as a real `python -m lumenkit` process.

Every case must exit with code 2, print exactly one non-empty line on stderr that names the culprit (the
flag or the file), show no traceback anywhere, and leave the folder it was pointed at absent or unchanged
(a listing with sizes and modification times before and after). The fixtures are tiny and built once; the
processes run a few at a time (each spends ~3 s importing torch), so the whole table takes about a minute.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# (id, argv with {placeholders}, substring of the one stderr line (placeholders filled too), the placeholder of the folder to watch)
# Placeholders: {out} a fresh path per case (not created); {model} a per-case gsir model folder holding chkpnt1.pth;
# {empty} a per-case empty folder; the rest are shared read-only inputs built by `inputs` below.
CASES = [
    # ---- diffusion toy / evaluate / timesteps: ranges, NaN, choices, lists
    ("diffusion-toy-steps", ["diffusion", "toy", "--steps", "0", "--out", "{out}"], "--steps 0", "out"),
    ("diffusion-toy-eta-nan", ["diffusion", "toy", "--eta", "nan", "--out", "{out}"], "--eta nan", "out"),
    ("diffusion-evaluate-samplers", ["diffusion", "evaluate", "--samplers", "ddim,heun", "--out", "{out}"],
     "--samplers 'ddim,heun': unknown heun", "out"),
    ("diffusion-timesteps-spacing", ["diffusion", "timesteps", "--spacing", "trailing"], "--spacing: invalid choice: 'trailing'", "out"),
    # ---- t2i data / train / sample / convert / evaluate
    ("t2i-data-n", ["t2i", "data", "-o", "{out}", "--n", "-1"], "--n -1", "out"),
    ("t2i-train-recipe-key", ["t2i", "train", "--config", "{recipe}", "--out", "{out}"], "{recipe}: unet: unknown key(s) stpes", "out"),
    ("t2i-train-fp16-cpu", ["t2i", "train", "unet", "--out", "{out}", "--mixed_precision", "fp16"],
     "--mixed_precision 'fp16': needs a CUDA GPU", "out"),
    ("t2i-train-batch-accum", ["t2i", "train", "unet", "--out", "{out}", "--batch_size", "10", "--gradient_accumulation_steps", "3"],
     "--batch_size 10: must be divisible by --gradient_accumulation_steps 3", "out"),
    ("t2i-train-vae-decoder-finetune", ["t2i", "train", "vae-decoder", "--out", "{out}", "--finetune"],
     "--decoder_only and --finetune exclude each other", "out"),
    ("t2i-sample-H", ["t2i", "sample", "--H", "-16", "--prompt", "x", "--outdir", "{out}"], "--H -16", "out"),
    ("t2i-sample-truncated-safetensors", ["t2i", "sample", "--prompt", "x", "--ckpt", "{truncated}", "--outdir", "{out}"],
     "{truncated}: not a valid safetensors file", "out"),
    ("t2i-sample-gsir-checkpoint", ["t2i", "sample", "--prompt", "x", "--ckpt", "{gsir_ckpt}", "--outdir", "{out}"],
     "{gsir_ckpt}: not a Stable Diffusion", "out"),
    ("t2i-sample-empty-model", ["t2i", "sample", "--prompt", "x", "--model", "{empty}", "--outdir", "{out}"],
     "{empty}: not a diffusers Stable Diffusion folder", "out"),
    ("t2i-convert-garbage-pth", ["t2i", "convert", "--checkpoint_path", "{garbage_pth}", "--dump_path", "{out}"],
     "{garbage_pth}: not a PyTorch checkpoint", "out"),
    ("t2i-evaluate-n-prompts", ["t2i", "evaluate", "--n-prompts", "1", "--out", "{out}"], "--n-prompts 1", "out"),
    # ---- video evaluate (sample / train / data: tests/video/test_cli.py)
    ("video-evaluate-clips", ["video", "evaluate", "--clips", "0", "-o", "{out}/s.json"], "--clips 0", "out"),
    ("video-base-motion-frames", ["video", "base", "motion", "--out", "{out}", "--frames", "0"], "--frames 0", "out"),
    ("video-evaluate-model", ["video", "evaluate", "--model", "{empty}/nope", "-o", "{out}/s.json"], "--model", "out"),
    # ---- longexp synth / run / evaluate
    ("longexp-run-threads", ["longexp", "run", "{burst}", "--threads", "-1", "-o", "{out}/x.png"], "--threads -1", "out"),
    ("longexp-run-garbage-mp4", ["longexp", "run", "{garbage_mp4}", "-o", "{out}/x.png"], "{garbage_mp4}: not a readable video", "out"),
    ("longexp-run-empty-folder", ["longexp", "run", "{empty}", "-o", "{out}/x.png"], "{empty}: a burst needs at least 2 frames, found 0", "out"),
    ("longexp-run-fake-pngs", ["longexp", "run", "{fake_frames}", "-o", "{out}/x.png"], "{fake_frames}/a.png: not a readable image", "out"),
    ("longexp-run-bit-depth-jpg", ["longexp", "run", "{burst}", "--bit-depth", "16", "-o", "{out}/x.jpg"],
     "--out '{out}/x.jpg': 16-bit output", "out"),
    ("longexp-synth-exposure-nan", ["longexp", "synth", "--exposure", "nan", "-o", "{out}"], "--exposure", "out"),
    ("longexp-evaluate-kinds", ["longexp", "evaluate", "--kinds", "objects,bogus", "--json", "{out}/r.json"], "--kinds 'objects,bogus'", "out"),
    ("longexp-evaluate-empty-folder", ["longexp", "evaluate", "{empty}", "--json", "{out}/r.json"], "{empty}: not a synthetic burst folder", "out"),
    # ---- gsir synth / train / render / eval
    ("gsir-synth-envmap-nan", ["gsir", "synth", "-o", "{out}", "--envmap", "{nan_exr}", "--resolution", "8", "--n_train", "1", "--n_test", "1"],
     "{nan_exr}: 1 of 32 pixels are not finite radiance >= 0 (1 NaN)", "out"),
    ("gsir-synth-envmap-missing", ["gsir", "synth", "-o", "{out}", "--envmap", "{missing}/sky.hdr"],
     "--envmap '{missing}/sky.hdr': no such file", "out"),
    ("gsir-synth-relight-not-latlong", ["gsir", "synth", "-o", "{out}", "--relight", "{square_hdr}", "--resolution", "8", "--n_train", "1",
                                        "--n_test", "1"], "{square_hdr}: 8x8 px is not a lat-long", "out"),
    ("gsir-train-backend", ["gsir", "train", "--backend", "bogus", "-s", "{scene}", "-m", "{out}"], "--backend: invalid choice: 'bogus'", "out"),
    ("gsir-train-empty-scene", ["gsir", "train", "-s", "{empty}", "-m", "{out}"], "-s/--source_path {empty}: not a NeRF-synthetic", "out"),
    ("gsir-train-fake-png", ["gsir", "train", "-s", "{fake_scene}", "-m", "{out}", "--iterations", "2", "--num_points", "50"],
     "{fake_scene}/train/r_000.png: not a readable image", "out"),
    ("gsir-train-t2i-checkpoint", ["gsir", "train", "-s", "{scene}", "-m", "{out}", "--iterations", "2", "--num_points", "50",
                                   "--start_checkpoint", "{t2i_safetensors}"], "{t2i_safetensors}: not a lumenkit gsir checkpoint", "out"),
    ("gsir-train-garbage-checkpoint", ["gsir", "train", "-s", "{scene}", "-m", "{out}", "--iterations", "2", "--num_points", "50",
                                       "--start_checkpoint", "{garbage_pth}"], "{garbage_pth}: cannot be loaded as a safe checkpoint", "out"),
    ("gsir-render-empty-model", ["gsir", "render", "-m", "{empty}", "-s", "{scene}"], "-m {empty}: no chkpnt<N>.pth found", "empty"),
    ("gsir-eval-nvs-no-renders", ["gsir", "eval", "nvs", "-m", "{empty}"], "-m {empty}: no test/ours_<iteration> renders", "empty"),
    ("gsir-eval-normal-no-source", ["gsir", "eval", "normal", "-m", "{model}"], "-s/--source_path", "model"),
    # ---- demo
    ("demo-systems", ["demo", "--systems", "diffusion,bogus", "--out", "{out}"], "--systems: unknown system(s) bogus", "out"),
    ("demo-device", ["demo", "--device", "tpu", "--out", "{out}"], "--device 'tpu'", "out"),
]


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder with its size and modification time ({} when the folder does not exist)."""
    if not folder.exists():
        return {}
    listing = {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns) for p in folder.rglob("*")}
    return {".": (-1, 0), **listing}  # "." : the folder exists (an empty one differs from none)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Shared inputs, each the cheapest of its kind: a real tiny t2i model and gsir scene, checkpoint and burst."""
    from lumenkit.common.images import write_hdr
    from lumenkit.gsir import synth as S
    from lumenkit.gsir.config import Stage1Config
    from lumenkit.gsir.gaussians import GaussianModel
    from lumenkit.gsir.train import save_checkpoint
    from lumenkit.longexp.data import SynthConfig as BurstConfig
    from lumenkit.longexp.data import synthesize, write_synth
    from lumenkit.t2i.pipeline import Text2Image
    from tests.t2i import write_test_tokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    d: dict[str, Path] = {"missing": root / "missing"}
    # t2i: the tiny preset as an original single file, and that file cut in half
    pipe = Text2Image.from_preset("tiny", write_test_tokenizer(root / "tok"), "cpu", seed=0)
    d["t2i_safetensors"] = root / "t2i" / "model.safetensors"
    pipe.save_single_file(d["t2i_safetensors"])
    raw = d["t2i_safetensors"].read_bytes()
    d["truncated"] = root / "truncated.safetensors"
    d["truncated"].write_bytes(raw[: len(raw) // 2])
    # gsir: a tiny path-traced scene, the same scene with a training PNG that is no image, a real checkpoint
    d["scene"] = root / "scene"
    S.synthesize_scene(d["scene"], S.SynthConfig(object="spheres", resolution=16, n_train=2, n_test=1, spp=2, env_resolution=8,
                                                 relight_envmaps=()), progress=False)
    d["fake_scene"] = root / "fake_scene"
    shutil.copytree(d["scene"], d["fake_scene"])
    (d["fake_scene"] / "train" / "r_000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    g = GaussianModel(sh_degree=0)
    g.create_from_points(torch.rand(20, 3) - 0.5, torch.rand(20, 3), spatial_lr_scale=1.0)
    cfg = Stage1Config(iterations=1, sh_degree=0)
    g.training_setup(cfg.optim)
    d["gsir_ckpt"] = save_checkpoint(root / "gsir_model" / "chkpnt1.pth", g, 1, cfg)
    env = S.make_envmap("sky", 4)
    env[1, 2, 0] = np.nan
    d["nan_exr"] = write_hdr(root / "maps" / "nan.exr", env)
    d["square_hdr"] = write_hdr(root / "maps" / "square.hdr", np.ones((8, 8, 3), np.float32))
    # longexp: a tiny burst, a folder of PNG-named text files, garbage bytes named .mp4
    write_synth(synthesize(BurstConfig(kind="lights", width=48, height=32, frames=3, subframes=1, seed=0)), root / "longexp")
    d["burst"] = root / "longexp" / "burst"
    d["fake_frames"] = root / "fake_frames"
    d["fake_frames"].mkdir()
    for n in ("a.png", "b.png"):
        (d["fake_frames"] / n).write_bytes(b"not a frame")
    d["garbage_mp4"] = root / "garbage.mp4"
    d["garbage_mp4"].write_bytes(np.random.default_rng(0).bytes(2000))
    # a file of no format at all, a recipe with a misspelled key
    d["garbage_pth"] = root / "garbage.pth"
    d["garbage_pth"].write_bytes(np.random.default_rng(1).bytes(1000))
    d["recipe"] = root / "recipe.json"
    d["recipe"].write_text(json.dumps({"unet": {"stpes": 3}}))
    return {k: str(v) for k, v in d.items()}


def _run_case(case, inputs: dict[str, str], folder: Path) -> dict:
    cid, argv, culprit, watch = case
    folder.mkdir(parents=True)
    fill = dict(inputs, out=str(folder / "out"), empty=str(folder / "empty"), model=str(folder / "model"))
    (folder / "empty").mkdir()
    (folder / "model").mkdir()
    shutil.copy(inputs["gsir_ckpt"], folder / "model" / "chkpnt1.pth")
    argv = [a.format(**fill) for a in argv]
    watched = Path(fill[watch])
    before = _listing(watched)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one thread: several run at once
    r = subprocess.run([sys.executable, "-m", "lumenkit", *argv], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    return {"argv": argv, "culprit": culprit.format(**fill), "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr,
            "before": before, "after": _listing(watched)}


def _skip_reason(cid: str) -> str | None:
    if cid == "t2i-train-fp16-cpu" and torch.cuda.is_available():
        return "fp16 is valid on a machine with CUDA"
    return None


@pytest.fixture(scope="module")
def results(request, inputs, tmp_path_factory) -> dict[str, dict]:
    """Run the selected cases, three processes at a time."""
    wanted = {item.callspec.params["case"][0] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    todo = [c for c in CASES if c[0] in wanted and _skip_reason(c[0]) is None]
    root = tmp_path_factory.mktemp("bad_input_runs")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c[0]: pool.submit(_run_case, c, inputs, root / c[0]) for c in todo}
        return {cid: f.result() for cid, f in futures.items()}


def test_the_table_covers_every_system_and_verb():
    verbs = {tuple(argv[:2]) if argv[0] != "demo" else ("demo",) for _, argv, _, _ in CASES}
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    assert verbs >= {("diffusion", "toy"), ("diffusion", "evaluate"), ("diffusion", "timesteps"), ("t2i", "data"), ("t2i", "train"),
                     ("t2i", "sample"), ("t2i", "convert"), ("t2i", "evaluate"), ("longexp", "synth"), ("longexp", "run"),
                     ("longexp", "evaluate"), ("gsir", "synth"), ("gsir", "train"), ("gsir", "render"), ("gsir", "eval"), ("demo",)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_culprit_and_writes_nothing(case, results):
    cid, _, _, watch = case
    if _skip_reason(cid):
        pytest.skip(_skip_reason(cid))
    r = results[cid]
    where = f"{' '.join(r['argv'])}\nstdout: {r['stdout'][-2000:]}\nstderr: {r['stderr'][-4000:]}"
    assert "Traceback" not in r["stdout"] + r["stderr"], where
    assert r["rc"] == 2, where
    lines = r["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].strip(), where
    assert r["culprit"] in lines[0], (r["culprit"], lines[0])
    assert r["after"] == r["before"], (f"{watch} folder changed", r["before"], r["after"])
