"""The one training engine (lumenkit.common.train_loop): distributed equivalence, exact resume, bf16."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lumenkit.common.config import ConfigError
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_dir
from lumenkit.common.train_loop import CHECKPOINT, LOSS_LOG, TrainConfig, load_checkpoint, lr_factor, micro_rows, read_log

SCRIPT = Path(__file__).with_name("_train_script.py")
STEPS, BATCH = 12, 8


def run(out: Path, *args, procs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = [*launcher, str(SCRIPT), str(out), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """1 process, global batch 8, fp32: the run the others must reproduce."""
    out = tmp_path_factory.mktemp("one_process")
    run(out, STEPS, BATCH, "no", 1)
    return out


def test_two_processes_match_one_process(reference, tmp_path):
    run(tmp_path, STEPS, BATCH, "no", 1, procs=2)  # gloo, 4 rows per process
    one, two = load_file(reference / "final.safetensors"), load_file(tmp_path / "final.safetensors")
    assert max_rel_diff(one, two) <= 1e-5
    # the models did learn: the comparison is not between two untrained models
    log = read_log(tmp_path / LOSS_LOG)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]


def test_gradient_accumulation_matches_one_big_batch(reference, tmp_path):
    run(tmp_path, STEPS, BATCH, "no", 2)  # 2 micro-batches of 4
    assert max_rel_diff(load_file(reference / "final.safetensors"), load_file(tmp_path / "final.safetensors")) <= 1e-5


def test_killed_run_resumes_bit_identical(reference, tmp_path):
    res = run(tmp_path, STEPS, BATCH, "no", 1, 7, check=False)  # dies inside step 7; last checkpoint: step 4
    assert res.returncode == 9
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4
    assert not (tmp_path / "final.safetensors").exists()
    res = run(tmp_path, STEPS, BATCH, "no", 1)
    assert "resumed from" in res.stdout + res.stderr
    a, b = load_file(reference / "final.safetensors"), load_file(tmp_path / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log has each step once, with the uninterrupted run's losses
    resumed, ref = read_log(tmp_path / LOSS_LOG), read_log(reference / LOSS_LOG)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in ref]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_bf16_tracks_fp32(tmp_path):
    """bf16 autocast: the loss per step stays within 2% of fp32's (measured: 0.1%) but is not identical."""
    steps = 40
    run(tmp_path / "fp32", steps, 16, "no", 1)
    run(tmp_path / "bf16", steps, 16, "bf16", 1)
    fp32 = [r["loss"] for r in read_log(tmp_path / "fp32" / LOSS_LOG)]
    bf16 = [r["loss"] for r in read_log(tmp_path / "bf16" / LOSS_LOG)]
    rel = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    assert max(rel) < 0.02
    assert max(rel) > 1e-6  # autocast really ran in bf16
    assert sum(bf16[-5:]) < 0.7 * sum(bf16[:5])  # and it learns


def test_lr_schedule_closed_form():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(cfg, 110) == pytest.approx(0.1)
    assert lr_factor(TrainConfig(steps=100, warmup_steps=0), 57) == 1.0  # min_lr_ratio 1: constant


def test_micro_rows_partition_the_global_batch():
    for world, accum in ((1, 1), (2, 1), (2, 3), (4, 2)):
        seen = sorted(i for r in range(world) for s in micro_rows(24, world, r, accum) for i in range(s.start, s.stop))
        assert seen == list(range(24))
    with pytest.raises(LumenkitError, match="--batch_size 10"):
        micro_rows(10, 2, 0, 3)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", -1), ("lr", 0.0), ("lr", float("nan")),
                                         ("mixed_precision", "fp8"), ("min_lr_ratio", 2.0), ("gradient_accumulation_steps", 0)])
def test_config_validation_names_the_flag(field, value):
    with pytest.raises(ConfigError, match=f"--{field}"):
        TrainConfig(**{field: value})


def test_bad_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / CHECKPOINT
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LumenkitError, match="unreadable checkpoint"):
        load_checkpoint(bad)
    torch.save({"some": torch.zeros(1)}, bad)
    with pytest.raises(LumenkitError, match="not a lumenkit training checkpoint"):
        load_checkpoint(bad)


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("interrupted")
    assert (target / "weights").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporaries left


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_mixed_precision_tracks_fp32(reference, tmp_path):
    """The same run on the GPU: fp32 weights within 1e-4 of the CPU's; bf16 and fp16 (GradScaler)
    losses within 2% of fp32's per step."""
    losses = {}
    for precision in ("no", "bf16", "fp16"):
        run(tmp_path / precision, STEPS, BATCH, precision, 1, -1, "cuda")
        losses[precision] = [r["loss"] for r in read_log(tmp_path / precision / LOSS_LOG)]
    assert max_rel_diff(load_file(reference / "final.safetensors"), load_file(tmp_path / "no" / "final.safetensors")) <= 1e-4
    for precision in ("bf16", "fp16"):
        rel = [abs(a - b) / a for a, b in zip(losses["no"], losses[precision])]
        assert max(rel) < 0.02, precision
