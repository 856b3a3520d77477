"""t2i benchmark: the shipped small Stable Diffusion on the shapes world, measured like GenEval.

One run computes: prompt accuracy (seen / unseen combinations) per sampler (DDPM 1000, DDIM 10/20/50,
PLMS 20/50, Euler-a 20/50) and per CFG scale (1, 3, 5, 7.5); CLIP score with our CLIP; the
oracle-feature Fréchet distance; VAE reconstruction PSNR; the oracle's own accuracy; training
images/s per stage (from the model's training_log.json); sampling latency per image on this machine;
why PLMS at 20 steps fails on this model (lumenkit vs diffusers' PNDMScheduler on the same noise, the
Adams-Bashforth order capped, less guidance, more steps); and the sd15 speed table from
benchmarks/results/t2i_speed.json, which `make bench` writes first by running benchmarks/t2i_speed.py
before this script (without that file this script runs the measurement itself) -> BENCHMARKS.md section "t2i".

    .venv/bin/python benchmarks/t2i.py              # full run, writes BENCHMARKS.md
    .venv/bin/python benchmarks/t2i.py --quick      # a few prompts and samplers, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402


def training_table(model_dir: Path) -> str:
    from lumenkit.common.bench import markdown_table

    log_path = model_dir / "training_log.json"
    if not log_path.is_file():
        return "_No training_log.json in the model folder._"
    log = json.loads(log_path.read_text())
    rows = []
    for name in ("clip", "vae", "vae_decoder", "unet", "oracle"):
        s = log["stages"].get(name)
        if not s:
            continue
        extra = {
            "clip": f"image->caption top-1 among 256: {100 * s.get('retrieval_top1', float('nan')):.1f}%",
            "vae": f"PSNR {s.get('psnr_db', float('nan')):.2f} dB, scaling_factor {s.get('scaling_factor', float('nan')):.3f}, {s['config'].get('crop', 0) or 64}px crops",
            "vae_decoder": f"decoder-only fine-tune (encoder frozen, latents unchanged): PSNR {s.get('psnr_db', float('nan')):.2f} dB",
            "unet": f"latent cache {s.get('latent_cache_seconds', 0):.0f} s, EMA {s['config'].get('ema_decay')}, CFG dropout {s['config'].get('caption_dropout')}",
            "oracle": f"held-out accuracy (all attributes) {100 * s.get('heldout_accuracy', {}).get('all', float('nan')):.2f}%",
        }[name]
        rows.append([name, s["steps"], s["batch_size"], f"{s['seconds'] / 60:.1f}", f"{s['images_per_s']:.1f}", f"{s['final_loss']:.4f}", extra])
    total = log.get("total_seconds", 0)
    note = log.get("note", "")  # how the run was done, written by the training run itself
    return (markdown_table(["stage", "steps", "batch", "minutes", "images / s", "final loss (EMA)", "notes"], rows)
            + f"\n\nSum of stage times: {total / 60:.1f} min on a 2-core CPU (bf16 autocast). {note}".rstrip()
            + "\n\nThe recipe is configs/t2i_shapes.json (these stages' configs, in steps; tests/t2i/test_train.py checks it "
              "against this training_log.json): `lumenkit t2i train --config configs/t2i_shapes.json --out WORK` trains these "
              "stages with these settings through the training engine, on 1 process or N (README, 'Training on more than one "
              "machine'). The shipped model itself was trained by the loop that preceded the engine (same data stream, losses "
              "and schedule; the CLIP logits are now computed in fp32 outside the model's autocast) and was resumed several times, "
              "some settings changing on the way (the UNet's offset noise and step target, the oracle's decay): the recipe "
              "holds the final settings, so a rebuild is a model of the same recipe, not a byte copy.")


def latency_table(model_dir: Path, quick: bool) -> str:
    from lumenkit.common.bench import markdown_table, time_call
    from lumenkit.t2i.pipeline import load_pipeline

    pipe = load_pipeline(model_dir, "cpu")
    rows = []
    for batch, repeat, warmup in ((1, 2 if quick else 3, 1), (16, 1, 0)):
        prompts = ["a large red circle in the centre on a white background"] * batch
        dt = time_call(lambda: pipe(prompts, num_inference_steps=20, guidance_scale=5.0, sampler="ddim",
                                    generator=torch.Generator().manual_seed(0), progress=False), repeat=repeat, warmup=warmup)
        rows.append(["ddim 20", batch, f"{dt:.3f}", f"{dt / batch:.4f}"])
    return markdown_table(["sampler", "batch", "s / call", "s / image"], rows) + f"\n\n({torch.get_num_threads()} torch threads, CFG 5, 64x64.)"


def _plms_capped(pipe, cond, uncond, x_T, steps: int, scale: float, max_order: int = 4, trace: list | None = None):
    """PLMS (CompVis plms.py / diffusers PNDM with skip_prk_steps) written out plainly, with the order of the
    Adams-Bashforth extrapolation capped at `max_order` (4 = PLMS; 1 = DDIM after the improved-Euler first
    step). Leading timesteps as diffusers' SD config, final alpha = alphas_cumprod[0], eps with CFG.
    trace gets (timestep, ||eps_k - eps_(k-1)|| / ||eps_k||) per step after the first: how much the guided eps
    changes between steps (small on a smooth trajectory, about 1 when the update zig-zags)."""
    ac = pipe.schedule.alphas_cumprod.double()
    T = pipe.schedule.num_timesteps
    ts = [int(t) for t in (torch.arange(steps) * (T // steps) + 1).flip(0)]
    a = [float(ac[t]) for t in ts]
    a_prev = a[1:] + [float(ac[0])]

    def eps(x, t):
        u, c = pipe.eps_model(torch.cat([x, x]), torch.full((2 * x.shape[0],), t), torch.cat([uncond, cond])).chunk(2)
        return u + scale * (c - u)

    def ddim(x, e, k):
        x0 = (x - (1 - a[k]) ** 0.5 * e) / a[k] ** 0.5
        return a_prev[k] ** 0.5 * x0 + (1 - a_prev[k]) ** 0.5 * e

    ab = {1: (1,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
    x, old = x_T.clone(), []
    with torch.inference_mode():
        for k, t in enumerate(ts):
            e = eps(x, t)
            if trace is not None and old:
                trace.append((t, float((e - old[-1]).norm() / e.norm())))
            if not old:  # pseudo improved Euler: eps averaged with eps at the predicted next point
                e_prime = 0.5 * (e + eps(ddim(x, e, k), ts[min(k + 1, steps - 1)]))
            else:
                coef = ab[min(len(old) + 1, max_order)]
                e_prime = sum(w * h for w, h in zip(coef, [e, *old[::-1]]))
            x = ddim(x, e_prime, k)
            old = (old + [e])[-3:]
    return x


def plms_check(model_dir: Path, n_prompts: int, steps: int = 20, scale: float = 5.0) -> str:
    """Why PLMS at few steps fails on this model while DDIM does not: lumenkit vs diffusers' PNDMScheduler on the
    same noise (a bug of ours or not?), then the same 20 steps with the Adams-Bashforth order capped, without and
    with less guidance, and with more steps; and how fast the guided eps changes from step to step."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from lumenkit.common.bench import markdown_table
    from lumenkit.t2i.evaluate import _accuracies, prompt_set
    from lumenkit.t2i.oracle import Oracle
    from lumenkit.t2i.pipeline import load_pipeline

    pipe = load_pipeline(model_dir, "cpu")
    oracle = Oracle.load(model_dir)
    seen, unseen = prompt_set(n_prompts, "train"), prompt_set(n_prompts, "heldout")
    caps = [sc.caption() for sc in seen + unseen]
    size = pipe.default_size()
    x_T = torch.randn(len(caps), int(pipe.unet.config.in_channels), size // pipe.vae_factor, size // pipe.vae_factor,
                      generator=torch.Generator().manual_seed(0))
    cond, uncond = pipe.encode_prompt(caps), pipe.encode_prompt([""] * len(caps))

    def acc(z):
        imgs = pipe.decode_latents(z).float() * 2 - 1
        return _accuracies(oracle, imgs[:n_prompts], seen)[0], _accuracies(oracle, imgs[n_prompts:], unseen)[0]

    def ours(sampler, n, s):
        return pipe(caps, num_inference_steps=n, guidance_scale=s, sampler=sampler, latents=x_T.clone(), output_type="latent", progress=False)

    sch = PNDMScheduler.from_config(pipe.scheduler_config, skip_prk_steps=True)  # the model's own betas and offsets
    ref = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                  scheduler=sch, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    z_plms = ours("plms", steps, scale)
    z_pndm = ref(caps, num_inference_steps=steps, guidance_scale=scale, height=size, width=size, latents=x_T.clone(), output_type="latent").images
    runs = [(f"lumenkit plms {steps}, CFG {scale:g}", z_plms), (f"diffusers PNDMScheduler {steps} (skip_prk_steps), CFG {scale:g}", z_pndm),
            (f"lumenkit ddim {steps}, CFG {scale:g}", ours("ddim", steps, scale))]
    capped = {o: _plms_capped(pipe, cond, uncond, x_T, steps, scale, o) for o in (1, 2, 3, 4)}
    runs += [(f"PLMS {steps} with Adams-Bashforth order <= {o}, CFG {scale:g}" + (" (= PLMS)" if o == 4 else ""), capped[o]) for o in (1, 2, 3, 4)]
    runs += [(f"lumenkit plms {steps}, CFG {s:g}", ours("plms", steps, s)) for s in (1.0, 3.0)]
    runs += [(f"lumenkit plms {n}, CFG {scale:g}", ours("plms", n, scale)) for n in (30, 40, 50)]
    accs = {name: acc(z) for name, z in runs}
    rows = [[name, f"{100 * a[0]:.1f}%", f"{100 * a[1]:.1f}%"] for name, a in accs.items()]
    d_ref = float((z_plms - z_pndm).abs().max())
    d_own = float((z_plms - capped[4]).abs().max())
    traces = {}
    for key, n, o in (("plms", steps, 4), ("ab2", steps, 2), ("ab1", steps, 1), ("plms50", 50, 4)):
        traces[key] = []
        _plms_capped(pipe, cond, uncond, x_T, n, scale, o, traces[key])
    t_mid = traces["plms"][len(traces["plms"]) // 2][0]

    def change_at(key):  # at the step whose timestep is nearest t_mid
        return 100 * min(traces[key], key=lambda tc: abs(tc[0] - t_mid))[1]

    def first_over(key, level=0.5):
        return next((t for t, c in traces[key] if c > level), 0)

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    ord_acc = {o: mean(accs[[k for k in accs if f"order <= {o}" in k][0]]) for o in (1, 2, 3, 4)}
    real = d_ref < 1e-2 and abs(mean(accs[runs[0][0]]) - mean(accs[runs[1][0]])) <= 1 / n_prompts and ord_acc[2] > ord_acc[4] + 0.3
    verdict = (
        f"lumenkit's PLMS and diffusers' PNDMScheduler, started from the same noise, end within {d_ref:.1e} of each other "
        f"(max |latent difference|; a plain re-implementation in this script, _plms_capped: {d_own:.1e}) with the same accuracy: the failure is the method's on "
        f"this model, not a bug of ours. It is the 4th-order Adams-Bashforth extrapolation of eps that fails: with the same "
        f"{steps} steps, order <= 2 reaches {100 * ord_acc[2]:.0f}% (mean of seen and unseen), order <= 3 {100 * ord_acc[3]:.0f}%, "
        f"order 4 (PLMS) {100 * ord_acc[4]:.0f}%. The update zig-zags: from one step to the next the guided eps changes by "
        f"{change_at('ab1'):.0f}% of its norm at t = {t_mid} with order 1 (the smooth trajectory), {change_at('ab2'):.0f}% with "
        f"order 2 and {change_at('plms'):.0f}% with PLMS (latent std {float(z_plms.std()):.2f} at the end vs "
        f"{float(runs[2][1].std()):.2f} for DDIM). The same oscillation grows in PLMS 50 too ({change_at('plms50'):.0f}% at "
        f"t = {t_mid}), but from a smaller start: it exceeds 50% only at t = {first_over('plms50')} with 50 steps, against "
        f"t = {first_over('plms')} with {steps}, i.e. only in the last low-noise steps, after colour, shape and position are "
        "settled. Adams-Bashforth 4's stability interval on the negative real axis is h|lambda| < 0.3, against 1 for order 2 "
        "and 2 for Euler (DDIM), and guidance scales the eps Jacobian up (hence the CFG 1 and 3 rows). On this model use "
        "DDIM or Euler-a for few steps, or PLMS with >= 50 steps."
        if real else
        f"lumenkit's PLMS and diffusers' PNDMScheduler differ by {d_ref:.1e} on the same noise, or the order-capped runs "
        "do not single out the Adams-Bashforth extrapolation: look for a bug."
    )
    return (f"{2 * n_prompts} prompts ({n_prompts} seen, {n_prompts} unseen), one fixed initial noise for every row.\n\n"
            + markdown_table(["run", "prompt acc. seen", "prompt acc. unseen"], rows) + "\n\n" + verdict)


def sd15_table(quick: bool = False) -> str:
    """The sd15 speed table of benchmarks/t2i_speed.py from its results file; `make bench` runs t2i_speed.py
    first. Without that file (a fresh checkout) this runs the measurement itself (~10 min on 2 cores) and
    writes the file, so the table is never older than the file it was read from."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import t2i_speed

    if not t2i_speed.CACHE.is_file():
        if quick:
            return f"_No {t2i_speed.CACHE.relative_to(ROOT)} (run benchmarks/t2i_speed.py; --quick does not)._"
        t2i_speed.main([])
    return t2i_speed.sd15_speed_table()


def main(argv=None) -> int:
    from lumenkit.t2i.evaluate import EvalConfig, evaluate, markdown_report
    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 prompts per split, 3 settings; prints, writes nothing")
    ap.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder (default: the shipped shapes model)")
    ap.add_argument("--n-prompts", dest="n_prompts", type=int, default=8, help="prompts per split (seen and unseen); small because DDPM 1000 on the shared CPU is slow")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on the shared 2-core machine)")
    ap.add_argument("--jobs", type=int, default=3, help="worker processes for the sampler/CFG sweep")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = Path(args.model)
    t0 = time.perf_counter()
    if args.quick:
        cfg = EvalConfig(n_prompts=4, samplers=("ddim:10", "euler_a:10"), scales=(1.0, 5.0), n_real=200)
    else:
        cfg = EvalConfig(n_prompts=args.n_prompts)
    result = evaluate(model_dir, cfg, device="cpu", jobs=args.jobs)
    sections = [
        "The small Stable Diffusion shipped in `src/lumenkit/t2i/pretrained/shapes` (trained here from scratch: CLIP, "
        "AutoencoderKL, UNet2DConditionModel) generates one 64x64 image per prompt; the attribute oracle reads shape, "
        "colour, size, position and background; a prompt counts as right when all five match. Unseen prompts use the "
        "held-out colour+shape pairs (red star, green triangle, blue circle, yellow square), never shown in training.",
        "### Evaluation\n\n" + markdown_report(result),
        "### Why PLMS 20 fails where PLMS 50 and DDIM 20 do not\n\n" + plms_check(model_dir, 4 if args.quick else args.n_prompts),
        "### Training (from training_log.json)\n\n" + training_table(model_dir),
        "### Sampling latency on this machine\n\n" + latency_table(model_dir, args.quick),
        "### Real SD 1.5 architecture: lumenkit vs diffusers\n\n" + sd15_table(args.quick),
        f"_The machine is shared with other jobs (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end): "
        f"timings are noisy. Benchmark wall time {(time.perf_counter() - t0) / 60:.1f} min._",
    ]
    md = "\n\n".join(sections)
    print(md)
    if not args.quick:
        from lumenkit.common.bench import write_section
        from lumenkit.common.fileio import atomic_write_json

        atomic_write_json(ROOT / "benchmarks" / "results" / "t2i_eval.json", result)
        write_section("t2i", md, title="t2i: small Stable Diffusion on the shapes world")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
