"""VideoMaker against its baselines on unseen subjects: the paper's Table 3 on the synthetic world.

    .venv/bin/python benchmarks/video.py [--work outputs/video_bench] [--clips 64] [--sample_steps 25]

Five models, trained by `lumenkit video train` with the same data, budget and seeds (--steps, batch 8,
--size px, 8 frames, seed 0; only the variant's own flag differs), each into WORK/<variant>/ (trained
there when absent; resumable):
  (a) text-to-video, no reference       --conditioning none
  (b) IP-Adapter (pooled CLIP embedding, decoupled cross-attention)  --conditioning ip_adapter
  (c) VideoMaker without the GIR loss   --beta 0
  (d) VideoMaker, motion modules frozen --no_train_motion
  (e) VideoMaker                        (defaults)
The instruments (lumenkit.video.evaluate, trained on real clips of TRAIN subjects, cached in
WORK/evaluators/) score --clips clips of unseen TEST subjects: one reference + class-level prompt
("a star moves left") per clip, the same references, prompts and start noise for every model, DDIM
--sample_steps steps, guidance --scale. The "real clips" row scores the generator's own clips of those
specs: the instruments' ceiling. Writes section "video" and benchmarks/results/video.json.
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


def train_command(work: Path, name: str, args) -> list[str]:
    return [sys.executable, "-m", "lumenkit", "video", "train", "--out", str(work / name), "--size", str(args.size),
            "--frames", str(args.frames), "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--seed", "0",
            "--threads", "1", *VARIANTS[name][1]]


def ensure_trained(work: Path, name: str, args) -> dict:
    """WORK/name/summary.json of a finished run of --steps steps (trains / resumes it first if needed)."""
    import subprocess

    summary = work / name / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["steps"] >= args.steps:
        return json.loads(summary.read_text())
    cmd = train_command(work, name, args)
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(summary.read_text())


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
    labels = {"real": "real clips of the specs (ceiling)", **{k: v[0] for k, v in VARIANTS.items()}}
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
        f"{args.steps} steps of batch {args.batch_size} on the shipped shapes t2i model + a fresh shapes motion adapter, seed 0, "
        "`lumenkit video train --size {size} --batch_size {batch} --steps {steps}` + its flag; train s/step is each run's own (five runs shared the "
        "2 cores). Instruments (lumenkit.video.evaluate), trained on real clips of train subjects: identity top-1 = the "
        "attribute classifier's best of the 260 test identities; identity similarity = cosine of the identity network's "
        "features, frames vs reference; sprite colour similarity = palette-histogram intersection inside the predicted "
        "subject mask vs the true sprite; motion accuracy = the motion classifier agrees with the prompt; temporal "
        "consistency = cosine of consecutive frames' features; dynamic degree = share of clips with optical flow above the "
        "threshold (Farneback).\n\n".format(size=args.size, steps=args.steps, batch=args.batch_size) + table + "\n\nTargets (issue 20):\n" + check_lines
        + f"\n\nChance: identity top-1 {IDENTITY_CHANCE:.3f}, motion accuracy {MOTION_CHANCE:.3f}."
        + f"\n\n_Load average {result.get('load_average', 'n/a')} on {os.cpu_count()} cores at the end of the run._")
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "outputs" / "video_bench64"), help="training folders (kept; resumable)")
    ap.add_argument("--steps", type=int, default=900, help="training steps of every model")
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
    summaries = {name: ensure_trained(work, name, args) for name in VARIANTS}
    ev = evaluators_at(args.evaluators)
    batch, prompts = eval_set(args.clips, args.seed, args.frames, args.size)
    truth = (batch.identity_ids, batch.motion_ids)
    rows = {"real": ev.score(batch.videos, batch.references, *truth)}
    clips, speed = {"real": batch.videos}, {}
    for name in VARIANTS:
        pipe = load_trained(work / name)
        rows[name], clips[name], speed[name] = score_pipeline(pipe, ev, batch, prompts, steps=args.sample_steps, scale=args.scale,
                                                              seed=args.seed, chunk=args.chunk)
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, f"{speed[name]:.2f} s/clip", flush=True)
    save_strips(clips, work / "strips")
    result = {"rows": rows, "sample_s_per_clip": speed, "train": {k: {"steps": s["steps"], "s_per_step": s["s_per_step"],
              "seconds": s["seconds"], "trainable_params": s["trainable_params"]} for k, s in summaries.items()},
              "args": vars(args), "load_average": round(os.getloadavg()[0], 1), "command": command_line()}
    body = render(result)
    print(body)
    if not args.no_write:
        atomic_write_json(RESULTS, {**result, "targets": [{"target": t, "met": ok, "measured": m} for t, ok, m in targets(result["rows"])]})
        write_section("video", body, title=TITLE)


if __name__ == "__main__":
    main()
