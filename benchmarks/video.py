"""VideoMaker against its baselines on unseen subjects: the paper's Table 3 on the synthetic world.

    .venv/bin/python benchmarks/video.py [--work outputs/video_bench] [--clips 64] [--sample_steps 25]

First the base every model starts from (lumenkit.video.base, `lumenkit video base vae|unet|motion --out BASE`:
the shipped t2i model's VAE and UNet trained further on the video world, then a text-to-video motion stage;
trained into --base when absent, resumable). Then five models, trained by `lumenkit video train --base
BASE/model --motion_adapter BASE/model/motion_adapter` with the same data, budget and seeds (--steps,
--batch_size, --size px, 8 frames, --lr, seed 0; only the variant's own flag differs), each into
WORK/<variant>/ (trained there when absent; resumable; --jobs of them at once, one thread each):
  (a) text-to-video, no reference       --conditioning none
  (b) IP-Adapter (pooled CLIP embedding, decoupled cross-attention)  --conditioning ip_adapter
  (c) VideoMaker without the GIR loss   --beta 0
  (d) VideoMaker, motion modules frozen --no_train_motion
  (e) VideoMaker                        (defaults)
The instruments (lumenkit.video.evaluate, trained on real clips of TRAIN subjects, cached in
WORK/evaluators/) score --clips clips of unseen TEST subjects: one reference + class-level prompt
("a star moves left") per clip, the same references, prompts and start noise for every model, DDIM
--sample_steps steps, guidance --scale. The "real clips" row scores the generator's own clips of those
specs: the instruments' ceiling; the two "VAE round trip" rows score those clips encoded and decoded by the
shipped shapes VAE and by the base's (what a latent model can at best reproduce). Writes section "video" and
benchmarks/results/video.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from lumenkit.common.bench import command_line, markdown_table, write_section  # noqa: E402
from lumenkit.common.fileio import atomic_write_json  # noqa: E402

VARIANTS = {  # name: (label, flags of `lumenkit video train` beyond the shared ones)
    "a_t2v": ("(a) text-to-video, no reference", ["--conditioning", "none"]),
    "b_ip_adapter": ("(b) IP-Adapter (pooled image embedding)", ["--conditioning", "ip_adapter"]),
    "c_no_gir": ("(c) VideoMaker w/o GIR loss", ["--beta", "0"]),
    "d_motion_frozen": ("(d) VideoMaker, motion frozen", ["--no_train_motion"]),
    "e_full": ("(e) VideoMaker (GIR + motion)", []),
}
MOTION_CHANCE, IDENTITY_CHANCE = 1 / 8, 1 / 260  # uniform guesses among the 8 motions / 260 test identities


RESULTS = ROOT / "benchmarks" / "results" / "video.json"
TITLE = "video: VideoMaker vs baselines on unseen subjects (paper Table 3 analogue)"


BASE_STAGES = ("vae", "unet", "motion")


def ensure_base(args) -> dict:
    """BASE/model (+ motion_adapter/): each stage of `lumenkit video base` run unless its summary exists."""
    import subprocess

    base = Path(args.base)
    for stage in BASE_STAGES:
        if not (base / f"base_{stage}.json").is_file():
            cmd = [sys.executable, "-m", "lumenkit", "video", "base", stage, "--out", str(base), "--threads", str(args.threads),
                   *(["--size", str(args.size), "--frames", str(args.frames)] if stage == "motion" else [])]
            print("training the base:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    return {s: json.loads((base / f"base_{s}.json").read_text()) for s in BASE_STAGES}


def train_command(work: Path, name: str, args) -> list[str]:
    model = Path(args.base) / "model"
    return [sys.executable, "-m", "lumenkit", "video", "train", "--out", str(work / name), "--size", str(args.size),
            "--frames", str(args.frames), "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--seed", "0",
            "--lr", str(args.lr), "--base", str(model), "--motion_adapter", str(model / "motion_adapter"),
            "--threads", "1", *VARIANTS[name][1]]


def _finished(work: Path, name: str, args) -> bool:
    summary = work / name / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["steps"] >= args.steps


def ensure_trained(work: Path, args) -> dict[str, dict]:
    """WORK/<variant>/summary.json of finished runs of --steps steps (trained / resumed first, --jobs at once)."""
    import subprocess

    todo = [n for n in VARIANTS if not _finished(work, n, args)]
    running: list[subprocess.Popen] = []
    for name in todo:
        while len(running) >= args.jobs:
            running.pop(0).wait()
        cmd = train_command(work, name, args)
        (work / name).mkdir(parents=True, exist_ok=True)
        print("training:", " ".join(cmd), flush=True)
        running.append(subprocess.Popen(cmd, stdout=open(work / f"{name}.log", "a"), stderr=subprocess.STDOUT))
    for proc in running:
        proc.wait()
    failed = [n for n in VARIANTS if not _finished(work, n, args)]
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)} (see {work}/<name>.log)")
    return {n: json.loads((work / n / "summary.json").read_text()) for n in VARIANTS}


@torch.no_grad()
def vae_round_trip(vae_folder: Path, videos: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Clips [B, F, 3, H, W] in [-1, 1] encoded (posterior mean) and decoded by the AutoencoderKL in vae_folder."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder, local_files_only=True).eval()
    x = videos.flatten(0, 1)
    out = torch.cat([vae.decode(vae.encode(x[i:i + chunk]).latent_dist.mean).sample.clamp(-1, 1) for i in range(0, len(x), chunk)])
    return out.view_as(videos)


def save_strips(clips: dict[str, torch.Tensor], folder: Path, n: int = 4) -> None:
    """The first n clips of every row as frame-strip PNGs (one row per clip) for a look."""
    from lumenkit.common.video import write_video

    folder.mkdir(parents=True, exist_ok=True)
    for name, c in clips.items():
        for i in range(min(n, len(c))):
            write_video(folder / f"{name}_{i}.png", ((c[i] + 1) / 2).clamp(0, 1))


def targets(rows: dict[str, dict]) -> list[tuple[str, bool, str]]:
    a, b, c, e = rows["a_t2v"], rows["b_ip_adapter"], rows["c_no_gir"], rows["e_full"]
    fid = lambda r: r["identity_similarity"]  # noqa: E731
    return [
        ("(e) beats (b) on subject fidelity (identity similarity, top-1, colour)",
         fid(e) > fid(b) and e["identity_top1"] > b["identity_top1"] and e["sprite_colour_similarity"] > b["sprite_colour_similarity"],
         f"{fid(e):.3f} vs {fid(b):.3f}; top-1 {e['identity_top1']:.3f} vs {b['identity_top1']:.3f}; colour "
         f"{e['sprite_colour_similarity']:.3f} vs {b['sprite_colour_similarity']:.3f}"),
        ("(e) motion accuracy within 5 points of (a), with (a) above chance (1/8 + 5 points)",
         e["motion_accuracy"] >= a["motion_accuracy"] - 0.05 and a["motion_accuracy"] > MOTION_CHANCE + 0.05,
         f"{100 * e['motion_accuracy']:.1f} vs {100 * a['motion_accuracy']:.1f}; chance {100 * MOTION_CHANCE:.1f}"),
        ("(c) < (e) on fidelity and temporal consistency", fid(c) < fid(e) and c["temporal_consistency"] < e["temporal_consistency"],
         f"fidelity {fid(c):.3f} vs {fid(e):.3f}; temporal {c['temporal_consistency']:.4f} vs {e['temporal_consistency']:.4f}"),
        ("(e)'s reference identity recognised in >= 80% of clips (top-1 among the 260 test subjects)", e["identity_top1"] >= 0.8,
         f"{100 * e['identity_top1']:.1f}%"),
    ]


def render(result: dict) -> str:
    """The section's markdown from a run's numbers (rows, sample_s_per_clip, train, args, load_average)."""
    args = argparse.Namespace(**result["args"])
    rows, speed, summaries = result["rows"], result["sample_s_per_clip"], result["train"]
    checks = targets(rows)
    labels = {"real": "real clips of the specs (ceiling)", "vae_shapes": "real clips, VAE round trip: shipped shapes VAE",
              "vae_base": "real clips, VAE round trip: the base's VAE", **{k: v[0] for k, v in VARIANTS.items()}}
    table = markdown_table(
        ["model", "identity top-1 (of 260)", "identity sim. (DINO-I analogue)", "sprite colour sim.", "motion acc. (CLIP-T analogue)",
         "temporal consistency", "dynamic degree", "train s/step", "sample s/clip"],
        [[labels[k], f"{r['identity_top1']:.3f}", f"{r['identity_similarity']:.3f}", f"{r['sprite_colour_similarity']:.3f}",
          f"{r['motion_accuracy']:.3f}", f"{r['temporal_consistency']:.4f}", f"{r['dynamic_degree']:.3f}",
          f"{summaries[k]['s_per_step']:.2f}" if k in summaries else "", f"{speed[k]:.2f}" if k in speed else ""]
         for k, r in rows.items()])
    check_lines = "\n".join(f"- {'met' if ok else 'NOT met'}: {t} ({m})" for t, ok, m in checks)
    body = (
        f"{args.clips} clips of unseen test subjects (never in training), {args.frames} frames at {args.size} px, one reference + a "
        f"class-level prompt each (\"a star moves left\": the identity must come from the reference); the same references, "
        f"prompts and start noise for every model; DDIM {args.sample_steps} steps, guidance {args.scale}. Every model: "
        f"{args.steps} steps of batch {args.batch_size} at lr {args.lr:g} from the video base (its VAE, UNet and motion adapter; "
        f"{base_line(result)}), seed 0, "
        "`lumenkit video train --base BASE/model --motion_adapter BASE/model/motion_adapter --size {size} --batch_size {batch} --steps {steps}` "
        "+ its flag; train s/step is each run's own ({jobs} runs at a time shared the 2 cores). Instruments (lumenkit.video.evaluate), trained on real clips of train subjects: identity top-1 = the "
        "attribute classifier's best of the 260 test identities; identity similarity = cosine of the identity network's "
        "features, frames vs reference; sprite colour similarity = palette-histogram intersection inside the predicted "
        "subject mask vs the true sprite; motion accuracy = the motion classifier agrees with the prompt; temporal "
        "consistency = cosine of consecutive frames' features; dynamic degree = share of clips with optical flow above the "
        "threshold (Farneback).\n\n".format(size=args.size, steps=args.steps, batch=args.batch_size, jobs=args.jobs) + table + "\n\nTargets (issue 20):\n" + check_lines
        + f"\n\nChance: identity top-1 {IDENTITY_CHANCE:.3f}, motion accuracy {MOTION_CHANCE:.3f}."
        + f"\n\n_Load average {result.get('load_average', 'n/a')} on {os.cpu_count()} cores at the end of the run._")
    return body


def base_line(result: dict) -> str:
    """How the base was trained, from its stages' summaries."""
    b = result.get("base", {})
    if not b:
        return "base not recorded"
    parts = []
    for stage, what in (("vae", "VAE"), ("unet", "image UNet"), ("motion", "motion stage")):
        s = b.get(stage, {})
        if s:
            parts.append(f"{what} {s['steps']} steps of batch {s['batch_size']} in {s['seconds'] / 60:.0f} min")
    return "base: " + ", ".join(parts) + ", on this machine"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "outputs" / "video_bench64"), help="training folders (kept; resumable)")
    ap.add_argument("--base", default=str(ROOT / "outputs" / "video_base"), help="the base's folder (`lumenkit video base --out`; trained when absent)")
    ap.add_argument("--steps", type=int, default=900, help="training steps of every model")
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate of every model (paper: 1e-5)")
    ap.add_argument("--jobs", type=int, default=5, help="models trained at once (one torch thread each)")
    ap.add_argument("--batch_size", type=int, default=4, help="training clips per step")
    ap.add_argument("--size", type=int, default=64, help="frame size (the shipped t2i model makes garbage below 64 px)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--clips", type=int, default=32, help="unseen-subject clips per model")
    ap.add_argument("--evaluators", default="", help="instrument folder ('' = the shipped ones, lumenkit.video.evaluate)")
    ap.add_argument("--sample_steps", type=int, default=25)
    ap.add_argument("--scale", type=float, default=8.0, help="classifier-free guidance scale")
    ap.add_argument("--chunk", type=int, default=16, help="clips per sampling batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no_write", action="store_true", help="print only")
    ap.add_argument("--render_only", action="store_true", help="rewrite the section from benchmarks/results/video.json (no run)")
    args = ap.parse_args()
    if args.render_only:  # the section again from the last run's numbers (benchmarks/results/video.json)
        result = json.loads(RESULTS.read_text())
        result.pop("targets", None)
        run = result.get("command", "benchmarks/video.py " + " ".join(f"--{k} {v}" for k, v in result["args"].items()
                                                                         if k not in ("no_write", "render_only")))
        body = render(result) + f"\n\n_Re-rendered from benchmarks/results/video.json; the numbers are those of the run `{run}`._"
        print(body)
        if not args.no_write:
            write_section("video", body, title=TITLE)
        return
    torch.set_num_threads(args.threads)
    from lumenkit.video.evaluate import eval_set, evaluators_at, score_pipeline
    from lumenkit.video.pipeline import load_trained

    work = Path(args.work)
    base = ensure_base(args)
    summaries = ensure_trained(work, args)
    ev = evaluators_at(args.evaluators)
    batch, prompts = eval_set(args.clips, args.seed, args.frames, args.size)
    truth = (batch.identity_ids, batch.motion_ids)
    rows = {"real": ev.score(batch.videos, batch.references, *truth)}
    from lumenkit.t2i.pipeline import SHIPPED_MODEL

    for key, folder in (("vae_shapes", SHIPPED_MODEL / "vae"), ("vae_base", Path(args.base) / "model" / "vae")):
        rows[key] = ev.score(vae_round_trip(folder, batch.videos), batch.references, *truth)
    clips, speed = {"real": batch.videos}, {}
    for name in VARIANTS:
        pipe = load_trained(work / name)
        rows[name], clips[name], speed[name] = score_pipeline(pipe, ev, batch, prompts, steps=args.sample_steps, scale=args.scale,
                                                              seed=args.seed, chunk=args.chunk)
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, f"{speed[name]:.2f} s/clip", flush=True)
    save_strips(clips, work / "strips")
    result = {"rows": rows, "sample_s_per_clip": speed, "train": {k: {"steps": s["steps"], "s_per_step": s["s_per_step"],
              "seconds": s["seconds"], "trainable_params": s["trainable_params"]} for k, s in summaries.items()},
              "base": base, "args": vars(args), "load_average": round(os.getloadavg()[0], 1), "command": command_line()}
    body = render(result)
    print(body)
    if not args.no_write:
        atomic_write_json(RESULTS, {**result, "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in targets(result["rows"])]})
        write_section("video", body, title=TITLE)


if __name__ == "__main__":
    main()
