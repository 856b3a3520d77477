"""The one training engine: every lumenkit trainer runs through `train(...)`, on Hugging Face accelerate.

The same call runs as one CPU process, as N CPU processes (gloo) or N GPUs (nccl) under
`accelerate launch --num_processes N` / `torchrun --nproc_per_node N`, and on several machines: the
distributed part is accelerate / torch.distributed; this module owns the loop around it.

What it owns (settings in `TrainConfig`, one flag each):
- the global batch: `batch_size` rows per optimizer step, split over processes and gradient-accumulation
  micro-batches. Micro-batch k of process r computes rows [(k * world + r) * m, + m), m = batch_size /
  (world * accumulation); `loss_fn(model, step, rows)` builds exactly those rows from generators seeded
  with (seed, step), so N processes at global batch B take the same step as 1 process at B;
- mixed precision (`no | bf16 | fp16`: the model's forward under autocast, fp32 master weights), AdamW
  (no weight decay on biases / norms), linear warm-up then cosine decay to lr * min_lr_ratio, gradient
  clipping, an EMA of the weights;
- atomic checkpoints every `ckpt_every` steps (model, optimizer, LR scheduler, EMA, every process's RNG
  states, step) in FOLDER/checkpoint.pt, `resume="auto"` continuing from it exactly;
- tqdm on rank 0 only, a loss log FOLDER/loss_log.jsonl and FOLDER/loss_curve.png at the end.

Checkpoints hold tensors and plain containers only and are read with torch.load(weights_only=True).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from lumenkit.common.config import check, check_range, config_to_dict, param
from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_path, atomic_write_json, atomic_write_text

CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "loss_log.jsonl"
LOSS_CURVE = "loss_curve.png"
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Settings of the engine; a stage's config subclasses this and changes the defaults it needs."""

    steps: int = param(1000, "optimizer steps")
    batch_size: int = param(64, "global batch: rows per optimizer step over all processes and accumulation micro-batches")
    gradient_accumulation_steps: int = param(1, "micro-batches per optimizer step and process")
    lr: float = param(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = param(0.01, "AdamW weight decay (not on biases and norms)")
    warmup_steps: int = param(50, "linear learning-rate warm-up steps")
    min_lr_ratio: float = param(1.0, "cosine decay after warm-up to lr x this (1 = constant)")
    grad_clip: float = param(1.0, "clip the gradient's global norm to this (0 = off)")
    ema_decay: float = param(0.0, "EMA of the weights with this decay, warmed up as min(d, (1+s)/(10+s)) (0 = off)")
    mixed_precision: Literal["no", "bf16", "fp16"] = param("bf16", "autocast the model's forward (fp32 master weights); fp16 needs a GPU")
    seed: int = param(0, "seed of the data order, the noise and the initial weights")
    ckpt_every: int = param(100, "write FOLDER/checkpoint.pt every this many steps (and at the end)")
    max_minutes: float = param(0.0, "stop with a checkpoint after this wall-clock time (0 = no limit)")
    resume: str = param("auto", "auto: continue from FOLDER/checkpoint.pt if present; never: start afresh; or a checkpoint path")
    log_every: int = param(10, "loss log / progress / time-budget check every this many steps")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "ckpt_every", "log_every"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, getattr(self, name), "must be an integer >= 1")
        check_range("lr", self.lr, 0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0)
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("grad_clip", self.grad_clip, 0)
        check_range("ema_decay", self.ema_decay, 0, 1)
        check(self.mixed_precision in PRECISIONS, "mixed_precision", self.mixed_precision, f"expected one of {', '.join(PRECISIONS)}")
        # both also checked where the run starts (the device and the process count), but here before any file is read or written
        check(self.mixed_precision != "fp16" or torch.cuda.is_available(), "mixed_precision", self.mixed_precision,
              "needs a CUDA GPU and this machine has none (use bf16 or no)")
        check(self.batch_size % self.gradient_accumulation_steps == 0, "batch_size", self.batch_size,
              f"must be divisible by --gradient_accumulation_steps {self.gradient_accumulation_steps} (x the number of processes)")
        check_range("max_minutes", self.max_minutes, 0)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """lr(step) / cfg.lr: linear warm-up over warmup_steps, then cosine decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    prog = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator of one step: a pure function of (seed, step), so resuming and splitting are exact."""
    return np.random.default_rng([seed, step])


def torch_gen(seed: int, step: int) -> torch.Generator:
    """The torch generator of one step (noise, timesteps): a pure function of (seed, step)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) + 17)


@dataclass
class TrainResult:
    steps_done: int
    seconds: float
    samples: int
    final_loss: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


LossFn = Callable[[torch.nn.Module, int, slice], torch.Tensor]


# ------------------------------------------------------------------------------------------ pieces
_ACCELERATOR = None


def make_accelerator(device: str | torch.device = "auto"):
    """The process's Accelerator (one per process: accelerate's state is a singleton), CPU unless CUDA
    is asked for or 'auto' finds it. Mixed precision is per run, in `autocast_forward`, not here."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        dev = str(device)
        _ACCELERATOR = Accelerator(cpu=dev == "cpu" or (dev == "auto" and not torch.cuda.is_available()))
    return _ACCELERATOR


@contextlib.contextmanager
def autocast_forward(model: torch.nn.Module, precision: str, device: torch.device):
    """Run model.forward under torch.autocast(bf16 | fp16) while the context lasts (fp32 master weights),
    as accelerate's mixed precision does; the loss outside the forward stays in fp32."""
    if precision == "no":
        yield
        return
    if precision == "fp16" and device.type != "cuda":
        raise LumenkitError("--mixed_precision fp16: needs a CUDA GPU (use bf16 or no on a CPU)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    forward = model.forward

    def autocast_fwd(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast_fwd
    try:
        yield
    finally:
        del model.forward  # back to the class's forward


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))


def micro_rows(batch_size: int, world: int, rank: int, accumulation: int) -> list[slice]:
    """The row ranges of the global batch this process computes, one per accumulation micro-batch."""
    parts = world * accumulation
    if batch_size % parts:
        raise LumenkitError(
            f"--batch_size {batch_size}: must be divisible by processes x --gradient_accumulation_steps = {world} x {accumulation}")
    m = batch_size // parts
    return [slice((k * world + rank) * m, (k * world + rank + 1) * m) for k in range(accumulation)]


def rng_state() -> dict:
    """This process's RNG states as tensors / plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "gauss": float(gauss)}, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(accelerator, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a list of one on a single process)."""
    if accelerator.num_processes == 1:
        return [obj]
    out = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise LumenkitError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "delete it or pass --resume never to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != "lumenkit-train":
        raise LumenkitError(f"{path}: not a lumenkit training checkpoint; delete it or pass --resume never")
    return state


def resume_path(cfg: TrainConfig, folder: Path) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        path = folder / CHECKPOINT
        return path if path.is_file() else None
    path = Path(cfg.resume)
    if not path.is_file():
        raise LumenkitError(f"--resume {path}: no such checkpoint")
    return path


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), decay warmed up."""

    def __init__(self, shadow: torch.nn.Module, decay: float):
        self.shadow, self.decay = shadow, decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, pm in zip(self.shadow.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)


# ------------------------------------------------------------------------------------------ the loop
def train(
    name: str,
    folder: str | Path,
    cfg: TrainConfig,
    model: torch.nn.Module,
    loss_fn: LossFn,
    *,
    ema_model: torch.nn.Module | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> TrainResult:
    """Run `cfg.steps` optimizer steps of `loss_fn` on the trainable parameters of `model`.

    loss_fn(model, step, rows) -> scalar loss: the mean over rows `rows` (a slice of the step's global
    batch of cfg.batch_size rows) computed with the `model` it is given (the distributed wrapper: call
    it, not the original). ema_model: a copy of the model that receives the EMA (cfg.ema_decay > 0).
    Returns what the whole run did (over resumes). On several processes every one must call train().
    """
    acc = make_accelerator(device)
    try:
        with autocast_forward(model, cfg.mixed_precision, acc.device):  # fp16 off CUDA fails here, before _Run writes config.json
            return _Run(name, Path(folder), cfg, model, acc, ema_model).loop(loss_fn, progress)
    finally:
        acc.free_memory()  # drop accelerate's references to this run's model


class _Run:
    """One run's state: the optimizer, scheduler, grad scaler, EMA and counters, and its checkpoints."""

    def __init__(self, name: str, folder: Path, cfg: TrainConfig, model: torch.nn.Module, acc, ema_model):
        self.name, self.folder, self.cfg, self.model, self.acc = name, folder, cfg, model, acc
        self.rows = micro_rows(cfg.batch_size, acc.num_processes, acc.process_index, cfg.gradient_accumulation_steps)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(cfg, s))
        self.scaler = torch.amp.GradScaler(acc.device.type, enabled=cfg.mixed_precision == "fp16")
        if ema_model is None and cfg.ema_decay > 0:
            raise LumenkitError(f"[{name}] --ema_decay {cfg.ema_decay}: this stage keeps no EMA model")
        self.ema = EMA(ema_model.requires_grad_(False), cfg.ema_decay) if ema_model is not None and cfg.ema_decay > 0 else None
        self.start, self.prev_seconds, self.prev_samples, self.last_loss = 0, 0.0, 0, float("nan")
        self._load()
        if acc.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "config.json", config_to_dict(cfg))
            truncate_log(folder / LOSS_LOG, self.start)

    def _load(self) -> None:
        ckpt = resume_path(self.cfg, self.folder)
        if ckpt is None:
            torch.manual_seed(self.cfg.seed + 7919 * self.acc.process_index)  # dropout & co: a stream per process
            if self.ema is not None:
                self.ema.shadow.load_state_dict(self.model.state_dict())
            return
        state = load_checkpoint(ckpt)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            self.ema.shadow.load_state_dict(state["ema"])
        self.start, self.prev_seconds, self.prev_samples = int(state["step"]), float(state["seconds"]), int(state["samples"])
        self.last_loss = float(state["loss"])
        if len(state["rng"]) == self.acc.num_processes:  # else: a different process count, fresh streams
            set_rng_state(state["rng"][self.acc.process_index])
        self.acc.print(f"[{self.name}] resumed from {ckpt} at step {self.start}")

    def _save(self, step: int, seconds: float) -> None:
        rngs = gather_objects(self.acc, rng_state())
        if self.acc.is_main_process:
            st = {"format": "lumenkit-train", "name": self.name, "step": step, "seconds": seconds, "loss": self.last_loss,
                  "samples": self.prev_samples + (step - self.start) * self.cfg.batch_size, "model": self.model.state_dict(),
                  "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "grad_scaler": self.scaler.state_dict(),
                  "rng": rngs, "config": config_to_dict(self.cfg)}
            if self.ema is not None:
                st["ema"] = self.ema.shadow.state_dict()
            with atomic_path(self.folder / CHECKPOINT) as tmp:
                torch.save(st, tmp)
        self.acc.wait_for_everyone()

    def _step(self, wrapped, loss_fn: LossFn, step: int) -> torch.Tensor:
        """One optimizer step over this process's micro-batches; returns their mean loss (no host sync)."""
        total = torch.zeros((), device=self.acc.device)
        for k, rows in enumerate(self.rows):
            sync = contextlib.nullcontext() if k == len(self.rows) - 1 else self.acc.no_sync(wrapped)
            with sync:
                loss = loss_fn(wrapped, step, rows)
                self.scaler.scale(loss / len(self.rows)).backward()
            total += loss.detach() / len(self.rows)
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return total

    def _log(self, done: int, loss_sum: torch.Tensor, n_steps: int, elapsed: float, bar) -> bool:
        """Loss log row and progress (the loop's only host syncs); True when the time budget is spent."""
        cfg = self.cfg
        mean = float(self.acc.reduce(loss_sum, reduction="mean")) / n_steps
        if not math.isfinite(mean):
            raise LumenkitError(f"[{self.name}] loss became {mean} by step {done}: lower --lr (the checkpoint of step "
                                f"{done - done % cfg.ckpt_every} is kept)")
        self.last_loss = mean
        rate = (done - self.start) * cfg.batch_size / max(elapsed, 1e-9)
        lr = cfg.lr * lr_factor(cfg, done - 1)
        if self.acc.is_main_process:
            append_log(self.folder / LOSS_LOG, {"step": done, "loss": mean, "lr": lr, "seconds": round(self.prev_seconds + elapsed, 3),
                                                 "samples_per_s": round(rate, 2)})
        bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:.1f}", lr=f"{lr:.2e}")
        over = float(cfg.max_minutes > 0 and self.prev_seconds + elapsed > cfg.max_minutes * 60)
        return bool(self.acc.reduce(torch.tensor(over, device=self.acc.device), reduction="sum") > 0)  # all ranks agree

    def loop(self, loss_fn: LossFn, progress: bool) -> TrainResult:
        from tqdm import tqdm

        cfg, acc = self.cfg, self.acc
        if self.start >= cfg.steps:  # nothing left to do: report the finished run
            return TrainResult(self.start, self.prev_seconds, self.prev_samples, self.last_loss)
        wrapped = acc.prepare_model(self.model)
        wrapped.train()
        bar = tqdm(total=cfg.steps, initial=self.start, desc=self.name, disable=not (progress and acc.is_main_process), mininterval=5.0)
        t0, done = time.perf_counter(), self.start
        loss_sum, since = torch.zeros((), device=acc.device), 0
        for step in range(self.start, cfg.steps):
            loss_sum += self._step(wrapped, loss_fn, step)
            done, since = step + 1, since + 1
            out_of_time = False
            if done % cfg.log_every == 0 or done == cfg.steps:
                out_of_time = self._log(done, loss_sum, since, time.perf_counter() - t0, bar)
                loss_sum, since = torch.zeros_like(loss_sum), 0
            bar.update(1)
            if done % cfg.ckpt_every == 0 or done == cfg.steps or out_of_time:
                self._save(done, self.prev_seconds + time.perf_counter() - t0)
            if out_of_time:
                acc.print(f"[{self.name}] time budget of {cfg.max_minutes} min reached at step {done}")
                break
        bar.close()
        if acc.is_main_process:
            plot_loss_curve(self.folder / LOSS_LOG, self.folder / LOSS_CURVE, title=self.name)
        ran = done - self.start
        return TrainResult(done, self.prev_seconds + time.perf_counter() - t0, self.prev_samples + ran * cfg.batch_size, self.last_loss)


# ------------------------------------------------------------------------------------------ the log
def append_log(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
            rows.append(json.loads(line))
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to `step` (a resumed run rewrites what came after its checkpoint)."""
    rows = [r for r in read_log(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot_loss_curve(log: Path, png: Path, title: str = "") -> Path | None:
    """The loss log as a PNG (log-scale loss against step)."""
    rows = read_log(log)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    if all(r["loss"] > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} loss" if title else "loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return png
