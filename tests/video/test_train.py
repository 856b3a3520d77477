"""lumenkit.video.train on the `tiny` t2i preset + the `tiny` motion preset: VideoMaker training through the
common engine lowers a held-out loss, resumes exactly, keeps the frozen weights frozen, and exports weights
that load back into a fresh video UNet."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from lumenkit.common.config import ConfigError, add_config_arguments, config_from_args
from lumenkit.common.train_loop import TrainConfig
from lumenkit.video import train as T
from lumenkit.video.models import is_motion_module, is_spatial_self_attention, load_videomaker_weights, video_eps


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random SD saved as a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from tests.t2i import tiny_pipeline

    root = tmp_path_factory.mktemp("video_base")
    tiny_pipeline(root).save_pretrained(root / "sd")
    return root / "sd"


def _cfg(base, **kw) -> T.VideoTrainConfig:
    d = dict(base=str(base), motion_preset="tiny", frames=2, size=32, batch_size=2, steps=4, lr=1e-3, warmup_steps=0,
             ema_decay=0.9, mixed_precision="no", ckpt_every=100, log_every=2, resume="never", seed=0)
    d.update(kw)
    return T.VideoTrainConfig(**d)


def _heldout_loss(parts, cfg, model) -> float:
    """The training loss function on a fixed batch of unseen (test-split) subjects, no condition dropout."""
    fixed = dataclasses.replace(cfg, seed=4242, batch_size=4, p_ref_drop=0.0, p_both_drop=0.0)
    loss = T.VideoMakerLoss(parts, fixed, "cpu", split="test")
    with torch.no_grad():
        return sum(float(loss(model, s, slice(0, 4))) for s in range(2)) / 2


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """30 steps (batch 4): the run, the untrained model it started from, and the output folder."""
    out = tmp_path_factory.mktemp("video_train")
    cfg = _cfg(base, steps=30, batch_size=4)
    start = T.build_video_model(cfg)  # the run draws the same initial weights from cfg.seed
    parts = T.load_frozen(cfg)
    before = _heldout_loss(parts, cfg, start)
    frozen_before = {"vae": _state(parts.vae), "text_encoder": _state(parts.text_encoder)}
    run = T.train_videomaker(out, cfg, "cpu", progress=False)
    return {"cfg": cfg, "run": run, "start": start, "parts": parts, "before": before, "frozen_before": frozen_before, "out": out}


# ------------------------------------------------------------------------------------------ config
def test_config_is_a_train_config_with_flags():
    assert issubclass(T.VideoTrainConfig, TrainConfig)
    p = add_config_arguments(argparse.ArgumentParser(), T.VideoTrainConfig)
    cfg = config_from_args(T.VideoTrainConfig, p.parse_args(["--frames", "4", "--no_train_motion", "--beta", "0", "--motion_preset", "tiny"]))
    assert (cfg.frames, cfg.train_motion, cfg.beta, cfg.motion_preset) == (4, False, 0.0, "tiny")
    d = T.VideoTrainConfig()
    assert d.mixed_precision == "no" and d.lr == 1e-4 and d.batch_size == 8
    assert (d.frames, d.alpha, d.beta, d.p_ref_drop, d.p_both_drop, d.train_motion) == (8, 0.01, 0.1, 0.25, 0.05, True)


@pytest.mark.parametrize("kw, flag", [
    ({"frames": 0}, "--frames"), ({"frames": 40}, "--frames"), ({"size": 30}, "--size"), ({"beta": -1.0}, "--beta"),
    ({"alpha": 2.0}, "--alpha"), ({"p_ref_drop": 0.99}, "--p_ref_drop"), ({"p_both_drop": -0.1}, "--p_both_drop"),
    ({"motion_preset": "huge"}, "--motion_preset"), ({"base": "/no/such/dir"}, "--base"),
    ({"motion_adapter": "/no/such/adapter"}, "--motion_adapter"), ({"lr": 0.0}, "--lr"),
])
def test_bad_values_give_one_line_errors_naming_the_flag(kw, flag):
    with pytest.raises(ConfigError) as exc:
        T.VideoTrainConfig(**kw)
    assert str(exc.value).startswith(flag) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------ the loss
def test_row_blocks_average_to_the_global_batch_loss(base):
    """N processes = 1 process: the mean of the losses of equal row blocks is the whole batch's loss,
    also at a step whose blocks keep different numbers of references (L_reg over the global batch)."""
    cfg = _cfg(base, batch_size=4, p_ref_drop=0.5, p_both_drop=0.0)
    parts, model = T.load_frozen(cfg), T.build_video_model(cfg)
    loss = T.VideoMakerLoss(parts, cfg)
    uneven = next(s for s in range(50) if int((~loss.draws(s, (1,), (1,))[1].ref[:2]).sum()) != int((~loss.draws(s, (1,), (1,))[1].ref[2:]).sum()))
    with torch.no_grad():
        for step in (0, uneven):
            full = loss(model, step, slice(0, 4))
            halves = (loss(model, step, slice(0, 2)) + loss(model, step, slice(2, 4))) / 2
            quarters = sum(loss(model, step, slice(i, i + 1)) for i in range(4)) / 4
            assert abs(float(full - halves)) < 1e-5 and abs(float(full - quarters)) < 1e-5
    # on the whole batch it is gir_loss's loss, and beta = 0 is the plain video loss
    with torch.no_grad():
        terms = loss.terms(model, uneven, slice(0, 4))
        assert float(loss(model, uneven, slice(0, 4))) == float(terms.loss) == pytest.approx(float(terms.video + 0.1 * terms.reg))


def test_text_contexts_do_not_depend_on_the_cache(base, monkeypatch):
    cfg = _cfg(base)
    loss = T.VideoMakerLoss(T.load_frozen(cfg), cfg)
    caps = ["a red circle moves left", "a blue square spins", "a red circle moves left"]
    first = loss.contexts(caps)
    monkeypatch.setattr(T, "CONTEXT_CACHE", 1)  # every new caption clears the cache
    again = loss.contexts(list(reversed(caps)) + ["the green triangle"])
    assert torch.equal(first, again[:3].flip(0)) and len(loss._contexts) <= 2


# ------------------------------------------------------------------------------------------ training
def test_training_lowers_the_heldout_loss(trained):
    run = trained["run"]
    after_live = _heldout_loss(trained["parts"], trained["cfg"], run.model)
    after_ema = _heldout_loss(trained["parts"], trained["cfg"], run.ema)
    assert after_live < 0.97 * trained["before"], (trained["before"], after_live)
    assert after_ema < trained["before"], (trained["before"], after_ema)
    s = json.loads((trained["out"] / "summary.json").read_text())
    assert s["steps"] == 30 and s["s_per_step"] > 0 and s["trainable_params"] > 0
    c = json.loads((trained["out"] / "config.json").read_text())
    assert c["format"] == T.CONFIG_FORMAT and c["frames"] == 2 and c["motion_preset"] == "tiny" and c["train"]["steps"] == 30
    assert (trained["out"] / "train" / "checkpoint.pt").is_file() and (trained["out"] / "train" / "loss_log.jsonl").is_file()


def test_frozen_weights_stay_and_trainable_ones_move(trained):
    run, start = trained["run"], trained["start"]
    for name, before in trained["frozen_before"].items():
        after = getattr(run.parts, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    assert not any(p.requires_grad for p in run.parts.vae.parameters()) and not any(p.requires_grad for p in run.parts.text_encoder.parameters())
    s0, s1 = start.unet.state_dict(), run.model.unet.state_dict()
    moved = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    trainable = {n for n, p in run.model.unet.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in run.model.unet.named_parameters() if is_spatial_self_attention(n) or is_motion_module(n)}
    assert moved == trainable  # ResBlocks, cross-attention, time embedding, norms, conv in/out: bit-identical
    assert any(".attn2." in k for k in s0) and not any(".attn2." in k and not is_motion_module(k) for k in moved)


def test_train_motion_off_keeps_the_motion_modules(base, tmp_path):
    cfg = _cfg(base, steps=3, train_motion=False)
    start = T.build_video_model(cfg).unet.state_dict()
    run = T.train_videomaker(tmp_path / "d", cfg, "cpu", progress=False)
    end = run.model.unet.state_dict()
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    assert moved and all(is_spatial_self_attention(k) for k in moved)
    assert moved == {n for n, _ in run.model.unet.named_parameters() if is_spatial_self_attention(n)}


def test_resume_after_a_kill_is_bit_identical(base, tmp_path, monkeypatch):
    cfg = _cfg(base, steps=6, ckpt_every=2, resume="auto")
    straight = T.train_videomaker(tmp_path / "straight", cfg, "cpu", progress=False)

    real = T.VideoMakerLoss.__call__

    def dies_at_step_5(self, model, step, rows):
        if step == 4:  # after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(self, model, step, rows)

    monkeypatch.setattr(T.VideoMakerLoss, "__call__", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        T.train_videomaker(tmp_path / "killed", cfg, "cpu", progress=False)
    assert torch.load(tmp_path / "killed" / "train" / "checkpoint.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(T.VideoMakerLoss, "__call__", real)
    resumed = T.train_videomaker(tmp_path / "killed", cfg, "cpu", progress=False)
    for a, b in ((straight.model, resumed.model), (straight.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the exported files hold the same tensors and metadata (not the same bytes: safetensors writes its
    # metadata map in a random order)
    from lumenkit.common.fileio import load_state_dict, read_safetensors_metadata

    wa, wb = (load_state_dict(p / T.WEIGHTS) for p in (tmp_path / "straight", tmp_path / "killed"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_safetensors_metadata(tmp_path / "straight" / T.WEIGHTS) == read_safetensors_metadata(tmp_path / "killed" / T.WEIGHTS)
    log = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, (p / "train" / "loss_log.jsonl").read_text().splitlines())]  # noqa: E731
    assert log(tmp_path / "straight") == log(tmp_path / "killed")


def test_beta_zero_trains_a_different_model(base, tmp_path):
    a = T.train_videomaker(tmp_path / "gir", _cfg(base, steps=3), "cpu", progress=False).model.state_dict()
    b = T.train_videomaker(tmp_path / "nogir", _cfg(base, steps=3, beta=0.0), "cpu", progress=False).model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_exported_weights_load_into_a_fresh_video_unet(trained):
    run, cfg = trained["run"], trained["cfg"]
    fresh = T.build_video_model(dataclasses.replace(cfg, seed=7)).unet.eval()  # another fresh adapter
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, cfg.frames + 1, 4, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    ctx = torch.randn(2, run.parts.text_encoder.config.max_position_embeddings, run.parts.text_encoder.config.hidden_size, generator=g)
    with torch.no_grad():
        want = video_eps(run.shipped.unet, x, t, ctx)
        assert not torch.allclose(video_eps(fresh, x, t, ctx), want, atol=1e-4)
        names = load_videomaker_weights(fresh, trained["out"] / T.WEIGHTS)
        assert torch.equal(video_eps(fresh, x, t, ctx), want)
    assert set(names) == {n for n, _ in fresh.named_parameters() if is_spatial_self_attention(n) or is_motion_module(n)}
    # the file holds the EMA weights
    ema = dict(run.ema.unet.named_parameters())
    from lumenkit.common.fileio import load_state_dict

    assert all(torch.equal(v, ema[k]) for k, v in load_state_dict(trained["out"] / T.WEIGHTS).items())


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one(base, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo, one thread each) at the same global batch ends with the weights of
    one process (to float rounding: the two halves' gradients are averaged instead of one batch's; AdamW's
    first steps magnify it to ~6e-5 relative, measured). Returning gir_loss's per-block loss instead (L_reg
    over each block's own kept references) ends 2.0 relative away at p_ref_drop 0.5."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text("import json, sys, torch\ntorch.set_num_threads(1)\nfrom lumenkit.video import train as T\n"
                      "T.run_train(sys.argv[1], T.VideoTrainConfig(**json.loads(sys.argv[2])), 'cpu', progress=False)\n")
    cfg = json.dumps(dataclasses.asdict(_cfg(base, steps=3, batch_size=4, p_ref_drop=0.5)))
    states = []
    for procs in (1, 2):
        launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        res = subprocess.run([*launcher, str(script), str(tmp_path / f"p{procs}"), cfg], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        states.append(torch.load(tmp_path / f"p{procs}" / "train" / "checkpoint.pt", weights_only=True)["model"])
    a, b = states
    assert max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a) < 1e-3
