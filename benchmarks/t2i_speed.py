"""Sampling speed of lumenkit.t2i vs diffusers' StableDiffusionPipeline on the real SD 1.5 architecture.

One process builds the `sd15` preset once with random weights (timing does not need trained weights;
nothing is downloaded) and hands the very same modules (CLIPTextModel, AutoencoderKL,
UNet2DConditionModel) to both pipelines: lumenkit's Text2Image (lumenkit.diffusion DDIM) and diffusers'
StableDiffusionPipeline with DDIMScheduler configured as SD 1.x. txt2img at 512x512, 2 DDIM steps,
classifier-free guidance 7.5 (cond + uncond batched into one UNet call by both), runs interleaved.

Seconds per step = (end of the sampling loop - start of the first UNet call) / steps (a forward hook
on the shared UNet), wall-clock and CPU (process) time, so it covers the UNet and each pipeline's
per-step sampler/guidance work; the calls return latents (VAE decoding is the same module for both and
is left out of the timed runs). Medians over interleaved runs in ABBA order after a warm-up at 512x512.

    .venv/bin/python benchmarks/t2i_speed.py            # sd15 at 512x512 (~10 min on 2 cores): writes the cache
    .venv/bin/python benchmarks/t2i_speed.py --quick    # the small `shapes` preset at 64x64, prints only

The full run stores its numbers in benchmarks/results/t2i_speed.json; `sd15_speed_table()` turns them
into the markdown table (unless `recompute=True`), and benchmarks/t2i.py puts that table into the t2i
section of BENCHMARKS.md (so the heavy timing is not repeated by every `make bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CACHE = ROOT / "benchmarks" / "results" / "t2i_speed.json"
PROMPT = "a photograph of an astronaut riding a horse"


def build_pair(preset: str = "sd15", seed: int = 0):
    """(lumenkit Text2Image, diffusers StableDiffusionPipeline) sharing one randomly initialised model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lumenkit.t2i.models import preset_config
    from lumenkit.t2i.pipeline import SCHEDULER_CONFIG, Text2Image
    from lumenkit.t2i.tokenizer import write_tokenizer

    cfg = preset_config(preset)
    tok_dir = Path(tempfile.mkdtemp(prefix="lumenkit-tok-"))
    words = PROMPT.split() + ["a", "red", "circle"]
    write_tokenizer(tok_dir, words, max_length=cfg["max_length"])
    vocab = cfg["text"].get("vocab_size")
    ours = Text2Image.from_preset(cfg, tok_dir, "cpu", vocab_size=vocab, seed=seed)
    sched = DDIMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")})
    theirs = StableDiffusionPipeline(
        vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer, unet=ours.unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


class StepClock:
    """Hooks on the shared UNet: wall and CPU (process) time of the first UNet call, time inside the UNet."""

    def __init__(self, unet):
        self.reset()
        unet.register_forward_pre_hook(self._unet)
        unet.register_forward_hook(self._unet_done)

    def reset(self):
        self.first_wall = self.first_cpu = self._t = None
        self.unet_calls, self.unet_seconds = 0, 0.0

    def _unet(self, *_):
        self.unet_calls += 1
        self._t = time.perf_counter()
        if self.first_wall is None:
            self.first_wall, self.first_cpu = self._t, time.process_time()

    def _unet_done(self, *_):
        self.unet_seconds += time.perf_counter() - self._t


def time_pair(ours, theirs, *, height: int, width: int, steps: int, scale: float, repeats: int) -> dict:
    """Interleaved runs in ABBA order (lumenkit, diffusers, diffusers, lumenkit, ...) with latent output.

    Per run: wall s / step and CPU s / step (process time, all threads) from the first UNet call to the
    end of the loop, and the work outside the UNet per step. Medians over the runs of each pipeline.
    CPU time counts the work done rather than the waiting, so it is far less disturbed by other jobs
    on a shared machine than wall time.
    """
    import statistics

    clock = StepClock(ours.unet)

    def run_ours():
        ours(PROMPT, num_inference_steps=steps, guidance_scale=scale, height=height, width=width,
             generator=torch.Generator().manual_seed(0), progress=False, output_type="latent")

    def run_theirs():
        theirs(PROMPT, num_inference_steps=steps, guidance_scale=scale, height=height, width=width,
               generator=torch.Generator().manual_seed(0), output_type="latent")

    res = {k: {"wall": [], "cpu": [], "overhead": [], "call": []} for k in ("lumenkit", "diffusers")}
    pair = [("lumenkit", run_ours), ("diffusers", run_theirs)]
    for i in range(repeats):
        for name, fn in pair if i % 2 == 0 else pair[::-1]:  # ABBA order cancels a drifting load
            clock.reset()
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn()
            t1, c1 = time.perf_counter(), time.process_time()
            if clock.unet_calls != steps:
                raise RuntimeError(f"{name}: {clock.unet_calls} UNet calls for {steps} steps (CFG not batched?)")
            loop = t1 - clock.first_wall
            r = res[name]
            r["wall"].append(loop / steps)
            r["cpu"].append((c1 - clock.first_cpu) / steps)
            r["overhead"].append((loop - clock.unet_seconds) / steps)
            r["call"].append(t1 - t0)
            print(f"  {name}: {r['wall'][-1]:.3f} s/step wall, {r['cpu'][-1]:.3f} s/step CPU, "
                  f"{1e3 * r['overhead'][-1]:.2f} ms/step outside the UNet", flush=True)
    med = statistics.median
    return {k: {"wall": med(v["wall"]), "cpu": med(v["cpu"]), "overhead": med(v["overhead"]), "call": med(v["call"]),
                "runs": len(v["wall"]), "all_wall": v["wall"], "all_cpu": v["cpu"]} for k, v in res.items()}


def _table(r: dict) -> str:
    from lumenkit.common.bench import markdown_table

    lk, df = r["lumenkit"], r["diffusers"]
    for d in (lk, df):  # best runs: the usual estimator of a cost under additive interference (timeit's min)
        d["wall_best"], d["cpu_best"] = min(d["all_wall"]), min(d["all_cpu"])
    keys = [("wall_best", "s / step, wall, best", 1.0), ("wall", "s / step, wall, median", 1.0),
            ("cpu_best", "s / step, CPU time, best", 1.0), ("cpu", "s / step, CPU time, median", 1.0),
            ("overhead", "ms / step outside the UNet (median)", 1e3), ("call", "s / call, encode + steps (median)", 1.0)]
    rows = [["lumenkit Text2Image (lumenkit.diffusion DDIM)"] + [lk[k] * f for k, _, f in keys],
            ["diffusers StableDiffusionPipeline (DDIMScheduler)"] + [df[k] * f for k, _, f in keys],
            ["ratio lumenkit / diffusers"] + [lk[k] / df[k] for k, _, _ in keys]]
    allw, allc = lk["all_wall"] + df["all_wall"], lk["all_cpu"] + df["all_cpu"]
    head = (f"{r['preset']} architecture (random weights; the very same modules in both pipelines), txt2img "
            f"{r['width']}x{r['height']}, {r['steps']} DDIM steps, CFG {r['scale']} (cond + uncond in one UNet call), batch 1, "
            f"fp32 on {r['device']}, {r['threads']} torch threads; {lk['runs']} runs each, interleaved in ABBA order "
            f"after a warm-up at the same size. Target: ratio <= 1.0. Since both call the same UNet, only the work outside "
            f"it can differ; the spread of s / step over all runs (wall {min(allw):.3f} to {max(allw):.3f}, CPU "
            f"{min(allc):.3f} to {max(allc):.3f}) is the noise of this shared machine.")
    return head + "\n\n" + markdown_table(["pipeline"] + [c for _, c, _ in keys], rows, floatfmt="{:.3f}")


def measure(preset: str = "sd15", height: int = 512, width: int = 512, steps: int = 2, scale: float = 7.5, repeats: int = 2) -> dict:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    ours, theirs = build_pair(preset)
    build_s = time.perf_counter() - t0
    print(f"built {preset} in {build_s:.1f} s; warm-up at {width}x{height} (1 step each)", flush=True)
    # oneDNN builds its kernels per input shape on first use: warm up at the timed size, not smaller
    ours(PROMPT, num_inference_steps=1, height=height, width=width, output_type="latent", progress=False)
    theirs(PROMPT, num_inference_steps=1, height=height, width=width, output_type="latent")
    r = time_pair(ours, theirs, height=height, width=width, steps=steps, scale=scale, repeats=repeats)
    r.update(preset=preset, height=height, width=width, steps=steps, scale=scale, device="cpu",
             threads=torch.get_num_threads(), build_seconds=build_s)
    return r


def sd15_speed_table(recompute: bool = False, **kw) -> str:
    """Markdown table of the sd15 timing; from the cache of the last full run unless `recompute`."""
    if not recompute and not kw and CACHE.is_file():
        r = json.loads(CACHE.read_text())
        note = f"\n\n_Measured {r.get('written', '?')} by `benchmarks/t2i_speed.py`"
        if "load_average" in r:
            note += (f"; load average {r['load_average'][0]:.1f} on {os.cpu_count()} cores at the end (the machine was "
                     "shared, absolute times are noisy; the two pipelines ran interleaved under the same load)")
        return _table(r) + note + "._"
    return _table(measure(**kw))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shapes preset at 64x64 (seconds); prints, writes nothing")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each pipeline")
    args = ap.parse_args(argv)
    if args.quick:
        r = measure("shapes", 64, 64, 2, 7.5, repeats=args.repeats)
        print(_table(r))
        return 0
    r = measure("sd15", 512, 512, 2, 7.5, repeats=args.repeats)
    from datetime import datetime, timezone

    from lumenkit.common.fileio import atomic_write_json

    r["written"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    r["load_average"] = os.getloadavg()
    atomic_write_json(CACHE, r)
    print(sd15_speed_table())
    print(f"wrote {CACHE} (benchmarks/t2i.py puts this table into BENCHMARKS.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
