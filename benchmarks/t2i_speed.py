"""Sampling speed of lumenkit.t2i vs diffusers' StableDiffusionPipeline on the real SD 1.5 architecture.

One process builds the `sd15` preset once with random weights (timing does not need trained weights;
nothing is downloaded) and hands the very same modules (CLIPTextModel, AutoencoderKL,
UNet2DConditionModel) to both pipelines: lumenkit's Text2Image (lumenkit.diffusion DDIM) and diffusers'
StableDiffusionPipeline with DDIMScheduler configured as SD 1.x. txt2img at 512x512, 2 DDIM steps,
classifier-free guidance 7.5 (cond + uncond batched into one UNet call by both), runs interleaved.

Seconds per step = (start of VAE decoding - start of the first UNet call) / steps, taken from forward
hooks on the shared modules, so it covers the UNet and each pipeline's per-step sampler/guidance work.
The whole call (prompt encoding, steps, VAE decoding) is reported too.

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
    """Forward pre-hooks on the shared modules: first UNet call and start of VAE decoding."""

    def __init__(self, unet, vae):
        self.reset()
        unet.register_forward_pre_hook(self._unet)
        unet.register_forward_hook(self._unet_done)
        vae.post_quant_conv.register_forward_pre_hook(self._decode)

    def reset(self):
        self.first_unet, self.decode, self.unet_calls, self.unet_seconds, self._t = None, None, 0, 0.0, None

    def _unet(self, *_):
        self.unet_calls += 1
        self._t = time.perf_counter()
        if self.first_unet is None:
            self.first_unet = self._t

    def _unet_done(self, *_):
        self.unet_seconds += time.perf_counter() - self._t

    def _decode(self, *_):
        self.decode = time.perf_counter()


def time_pair(ours, theirs, *, height: int, width: int, steps: int, scale: float, repeats: int) -> dict:
    """Interleaved runs (lumenkit, diffusers, diffusers, lumenkit, ...); best seconds per step and per call."""
    clock = StepClock(ours.unet, ours.vae)

    def run_ours():
        ours(PROMPT, num_inference_steps=steps, guidance_scale=scale, height=height, width=width,
             generator=torch.Generator().manual_seed(0), progress=False)

    def run_theirs():
        theirs(PROMPT, num_inference_steps=steps, guidance_scale=scale, height=height, width=width,
               generator=torch.Generator().manual_seed(0), output_type="np")

    res = {k: {"step": [], "call": [], "overhead": []} for k in ("lumenkit", "diffusers")}
    pair = [("lumenkit", run_ours), ("diffusers", run_theirs)]
    for i in range(repeats):
        for name, fn in pair if i % 2 == 0 else pair[::-1]:  # ABBA order cancels a drifting load
            clock.reset()
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn()
            t1 = time.perf_counter()
            if clock.unet_calls != steps:
                raise RuntimeError(f"{name}: {clock.unet_calls} UNet calls for {steps} steps (CFG not batched?)")
            loop = clock.decode - clock.first_unet
            res[name]["step"].append(loop / steps)
            res[name]["overhead"].append((loop - clock.unet_seconds) / steps)
            res[name]["call"].append(t1 - t0)
            print(f"  {name}: {res[name]['step'][-1]:.3f} s/step ({1e3 * res[name]['overhead'][-1]:.2f} ms outside the UNet), "
                  f"{t1 - t0:.2f} s/call", flush=True)
    return {k: {"step": min(v["step"]), "call": min(v["call"]), "overhead": min(v["overhead"]), "runs": len(v["step"]),
                "all_steps": v["step"]} for k, v in res.items()}


def _table(r: dict) -> str:
    from lumenkit.common.bench import markdown_table

    lk, df = r["lumenkit"], r["diffusers"]
    has_oh = "overhead" in lk and "overhead" in df
    rows = [
        ["lumenkit Text2Image (lumenkit.diffusion DDIM)", lk["step"], lk["call"]],
        ["diffusers StableDiffusionPipeline (DDIMScheduler)", df["step"], df["call"]],
        ["ratio lumenkit / diffusers", lk["step"] / df["step"], lk["call"] / df["call"]],
    ]
    cols = ["pipeline", "s / step", "s / call (encode + steps + decode)"]
    if has_oh:  # runs before this column existed lack it
        for row, v in zip(rows, (1e3 * lk["overhead"], 1e3 * df["overhead"], lk["overhead"] / df["overhead"])):
            row.insert(2, v)
        cols.insert(2, "ms / step outside the UNet (sampler + guidance)")
    head = (f"{r['preset']} architecture (random weights, same modules in both), txt2img {r['width']}x{r['height']}, "
            f"{r['steps']} DDIM steps, CFG {r['scale']}, batch 1, fp32 on {r['device']}; best of {lk['runs']} interleaved runs "
            f"each ({r['threads']} torch threads). Target: ratio <= 1.0.")
    if "all_steps" in lk:
        allv = lk["all_steps"] + df["all_steps"]
        head += (f" Both pipelines call the same UNet module, so only the work outside the UNet differs; the "
                 f"spread of s / step over all runs ({min(allv):.3f} to {max(allv):.3f}) is the noise of this shared machine.")
    return head + "\n\n" + markdown_table(cols, rows, floatfmt="{:.3f}")


def measure(preset: str = "sd15", height: int = 512, width: int = 512, steps: int = 2, scale: float = 7.5, repeats: int = 2) -> dict:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    ours, theirs = build_pair(preset)
    build_s = time.perf_counter() - t0
    print(f"built {preset} in {build_s:.1f} s; warm-up at {width}x{height} (1 step each, one VAE decode)", flush=True)
    # oneDNN builds its kernels per input shape on first use: warm up at the timed size, not smaller
    ours(PROMPT, num_inference_steps=1, height=height, width=width, output_type="latent", progress=False)
    z = theirs(PROMPT, num_inference_steps=1, height=height, width=width, output_type="latent").images
    ours.decode_latents(z)
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
    ap.add_argument("--repeats", type=int, default=2)
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
