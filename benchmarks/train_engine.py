"""The training engine's speed: steps/s of the real t2i UNet stage, 1 vs 2 processes, fp32 vs bf16.

    .venv/bin/python benchmarks/train_engine.py [--steps 30] [--batch_size 64]

Each row runs `lumenkit t2i train unet` (the shipped shapes model's VAE / text encoder / tokenizer,
the shipped recipe's UNet config) for --steps optimizer steps at the same global batch, as one
process with 2 torch threads or as 2 torchrun processes (gloo) with 1 thread each, and reads the
engine's own loss log: steps/s over the steps after the first log row (warm-up excluded).
Informational: on a 2-core machine two processes share the same cores. Writes section "train-engine".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lumenkit.common.bench import markdown_table, write_section  # noqa: E402

SHIPPED = ROOT / "src" / "lumenkit" / "t2i" / "pretrained" / "shapes"
RUNS = ((1, "no"), (1, "bf16"), (2, "no"), (2, "bf16"))


def work_folder(root: Path) -> Path:
    """A t2i work folder holding the shipped VAE, text encoder and tokenizer (what the UNet stage needs)."""
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(SHIPPED / part, root / part)
    return root


def run(template: Path, procs: int, precision: str, steps: int, batch: int, log_every: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "w"
        shutil.copytree(template, work)
        launcher = [sys.executable, "-m", "lumenkit"] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "lumenkit"]
        cmd = [*launcher, "t2i", "train", "unet", "--config", str(ROOT / "configs" / "t2i_shapes.json"), "--out", str(work),
               "--steps", str(steps), "--batch_size", str(batch), "--mixed_precision", precision, "--n_latents", "512",
               "--log_every", str(log_every), "--ckpt_every", str(steps), "--threads", str(2 // procs)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
        log = [json.loads(line) for line in (work / "unet_train" / "loss_log.jsonl").read_text().splitlines()]
    first, last = log[0], log[-1]
    steps_per_s = (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])
    return {"processes": procs, "precision": precision, "steps_per_s": steps_per_s, "images_per_s": steps_per_s * batch,
            "final_loss": last["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--log_every", type=int, default=5)
    ap.add_argument("--no_write", action="store_true", help="print only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = work_folder(Path(tmp) / "template")
        rows = [run(template, p, mp, args.steps, args.batch_size, args.log_every) for p, mp in RUNS]
    base = rows[0]["steps_per_s"]
    table = markdown_table(
        ["processes x threads", "mixed precision", "steps/s", "images/s", "vs 1 process fp32", f"loss at step {args.steps}"],
        [[f"{r['processes']} x {2 // r['processes']}", r["precision"], f"{r['steps_per_s']:.3f}", f"{r['images_per_s']:.1f}",
          f"{r['steps_per_s'] / base:.2f}x", f"{r['final_loss']:.4f}"] for r in rows])
    body = (
        f"The t2i UNet stage (shapes preset, the shipped recipe's settings) on the one training engine, global batch "
        f"{args.batch_size}, {args.steps} steps, steps/s after the first {args.log_every} (warm-up). One process with 2 torch "
        "threads against 2 torchrun processes (gloo) with 1 thread each, fp32 against bf16 autocast. Informational: on this "
        "2-core machine both layouts use the same two cores; the processes add gradient all-reduces. The same global batch "
        "gives the same weights on 1 or 2 processes (tests/common/test_train_loop.py, tests/t2i/test_train.py).\n\n" + table
        + f"\n\n_Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end (other jobs inflate every row alike)._")
    print(body)
    if not args.no_write:
        write_section("train-engine", body, title="train-engine: one training loop, 1 vs 2 processes, fp32 vs bf16")


if __name__ == "__main__":
    main()
