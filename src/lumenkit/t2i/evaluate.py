"""Evaluation of a text-to-image model on the shapes world, like GenEval (seed 003, spec t2i.md).

- Prompt accuracy: the share of generated images whose every attribute (shape, colour, size,
  position, background), as read by the attribute oracle, matches the prompt; on seen (training)
  and unseen (held-out colour+shape pairs) prompts; per sampler and step count, per CFG scale.
- CLIP score: 100 * cosine(image embedding, caption embedding) with the project's own CLIP
  (the real images of the same prompts give the reference value).
- Oracle-feature Fréchet distance: the Fréchet distance between Gaussians fitted to the oracle's
  128-d penultimate features of generated and of real images (FID's formula; no Inception network).
- VAE reconstruction PSNR (dB, on [0, 1] sRGB values) of fresh real images.

Images are [B, 3, 64, 64] float in [-1, 1] throughout.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lumenkit.common.config import check, check_range, param
from lumenkit.common.errors import LumenkitError
from lumenkit.diffusion import SAMPLERS
from lumenkit.t2i import data as D
from lumenkit.t2i.pipeline import SHIPPED_MODEL, load_pipeline

# sampler:steps of the sampler sweep and the CFG scales of the guidance sweep (spec t2i.md)
SAMPLER_SWEEP: tuple[str, ...] = ("ddpm:1000", "ddim:10", "ddim:20", "ddim:50", "plms:20", "plms:50", "euler_a:20", "euler_a:50")
CFG_SWEEP: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5)


def parse_sampler_steps(item: str | tuple[str, int], flag: str = "samplers") -> tuple[str, int]:
    """'ddim:20' (or ('ddim', 20)) -> ('ddim', 20); anything else is a ConfigError naming --flag."""
    name, _, steps = item.partition(":") if isinstance(item, str) else (item[0], ":", str(item[1]))
    name, steps = name.strip(), steps.strip()
    check(name in SAMPLERS and steps.isdigit() and int(steps) >= 1, flag, item if isinstance(item, str) else f"{item[0]}:{item[1]}",
          f"want NAME:STEPS with NAME in {', '.join(SAMPLERS)} and STEPS >= 1")
    return name, int(steps)


@dataclass
class EvalConfig:
    """What `lumenkit t2i evaluate` measures (each field is a flag of that command)."""

    n_prompts: int = param(24, "prompts per split (seen and unseen)", flag="n-prompts")
    seed: int = param(0, "seed of the prompt sets and of the initial noise")
    sweep_scale: float = param(5.0, "CFG scale of the sampler sweep", flag="scale")
    samplers: tuple[str, ...] = param(SAMPLER_SWEEP, "comma list of NAME:STEPS for the sampler sweep")
    cfg_sampler: str = param("ddim:20", "NAME:STEPS of the CFG-scale sweep")
    scales: tuple[float, ...] = param(CFG_SWEEP, "comma list of CFG scales for the CFG-scale sweep")
    n_real: int = param(1000, "real images for the Fréchet reference")
    batch_size: int = param(128, "images per sampling batch")

    def __post_init__(self) -> None:
        check(isinstance(self.n_prompts, int) and self.n_prompts >= 2, "n-prompts", self.n_prompts, "must be >= 2")
        check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "must be >= 0")
        check_range("scale", self.sweep_scale)
        self.samplers = tuple("{}:{}".format(*parse_sampler_steps(s)) for s in self.samplers)
        check(len(self.samplers) > 0, "samplers", "", "give at least one NAME:STEPS")
        self.cfg_sampler = "{}:{}".format(*parse_sampler_steps(self.cfg_sampler, "cfg_sampler"))
        self.scales = tuple(float(x) for x in self.scales)
        for x in self.scales:
            check_range("scales", x)
        check(isinstance(self.n_real, int) and self.n_real >= 2, "n_real", self.n_real, "must be >= 2")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")

    def settings(self) -> list[tuple[str, int, float]]:
        """(sampler, steps, CFG scale) of every generation run: the sampler sweep, then the CFG sweep."""
        out = [(*parse_sampler_steps(s), self.sweep_scale) for s in self.samplers]
        name, steps = parse_sampler_steps(self.cfg_sampler)
        return out + [(name, steps, sc) for sc in self.scales if (name, steps, sc) not in out]


@dataclass
class Row:
    sampler: str
    steps: int
    scale: float
    acc_seen: float
    acc_unseen: float
    attr_seen: dict = field(default_factory=dict)
    attr_unseen: dict = field(default_factory=dict)
    clip_score: float = float("nan")
    frechet: float = float("nan")
    seconds_per_image: float = float("nan")


def prompt_set(n: int, split: str, seed: int = 0) -> list[D.Scene]:
    """n distinct single-object scenes of a split (train = seen, heldout = unseen), seeded."""
    pool = D.all_scenes(split)
    rng = np.random.default_rng([seed, 7, len(pool)])
    pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in pick]


@torch.no_grad()
def generate(pipe, captions: Sequence[str], sampler: str = "ddim", steps: int = 20, scale: float = 5.0,
             seed: int = 0, batch_size: int = 128) -> torch.Tensor:
    """Generate one image per caption -> [N, 3, 64, 64] in [-1, 1]. Noise: seeded per batch."""
    out = []
    for i in range(0, len(captions), batch_size):
        g = torch.Generator().manual_seed(seed * 7919 + i)
        imgs = pipe(list(captions[i : i + batch_size]), num_inference_steps=steps, guidance_scale=scale, sampler=sampler,
                    generator=g, height=D.RESOLUTION, width=D.RESOLUTION, output_type="pt", progress=False)
        out.append(imgs.float().cpu() * 2 - 1)
    return torch.cat(out)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of features [N, F] (FID's formula)."""
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


class ClipScorer:
    """CLIP score = 100 * cos(image, text) with the model folder's clip/ (our contrastively trained CLIP)."""

    def __init__(self, model_dir: Path, device="cpu"):
        from transformers import CLIPModel

        from lumenkit.t2i.tokenizer import load_tokenizer

        if not (Path(model_dir) / "clip" / "config.json").is_file():
            raise LumenkitError(f"{model_dir}: no clip/ folder (the CLIP model is needed for the CLIP score)")
        self.model = CLIPModel.from_pretrained(Path(model_dir) / "clip").to(device).eval()
        self.tok = load_tokenizer(Path(model_dir) / "tokenizer")
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        from lumenkit.t2i.tokenizer import tokenize

        ie = self.model.get_image_features(pixel_values=images.to(self.device))
        te = self.model.get_text_features(input_ids=tokenize(self.tok, list(captions)).to(self.device))
        ie = getattr(ie, "pooler_output", ie)
        te = getattr(te, "pooler_output", te)
        return 100 * torch.nn.functional.cosine_similarity(ie, te).cpu()


@torch.no_grad()
def vae_psnr(vae, n: int = 256, seed: int = 5, device="cpu") -> float:
    """PSNR (dB) of VAE reconstructions (posterior mean) of n fresh real images, on [0, 1] values."""
    from lumenkit.common.metrics import psnr

    b = D.make_batch(np.random.default_rng([seed, 55]), n, "all")
    rec = vae.decode(vae.encode(b.images.to(device)).latent_dist.mean).sample.clamp(-1, 1).cpu()
    return psnr((rec + 1) / 2, (b.images + 1) / 2)


@torch.no_grad()
def vae_roundtrip_accuracy(vae, oracle, images: torch.Tensor, scenes: list[D.Scene], device="cpu") -> float:
    """Share of real images of the prompts whose every attribute the oracle still reads right after a
    VAE encode/decode (posterior mean): the ceiling on prompt accuracy that the VAE allows."""
    rec = vae.decode(vae.encode(images.to(device)).latent_dist.mean).sample.clamp(-1, 1).float().cpu()
    return _accuracies(oracle, rec, scenes)[0]


def _accuracies(oracle, images: torch.Tensor, scenes: list[D.Scene]) -> tuple[float, dict]:
    from lumenkit.t2i.oracle import verdicts

    ok = verdicts(oracle.predict(images), scenes)
    attr = {k: float(v.float().mean()) for k, v in ok.items()}
    return attr["all"], attr


def _eval_settings(model_dir: str, cfg: EvalConfig, settings: list, real_feats: torch.Tensor, device="cpu",
                   progress: bool = True, threads: int = 0) -> list[dict]:
    """Rows (as dicts) of the given (sampler, steps, scale) settings; runs in a worker process when jobs > 1."""
    from tqdm import tqdm

    from lumenkit.t2i.oracle import Oracle

    if threads > 0:
        torch.set_num_threads(threads)
    pipe = load_pipeline(model_dir, device)
    oracle = Oracle.load(model_dir, device)
    scorer = ClipScorer(Path(model_dir), device)
    seen, unseen = prompt_set(cfg.n_prompts, "train", cfg.seed), prompt_set(cfg.n_prompts, "heldout", cfg.seed)
    captions = [s.caption() for s in seen + unseen]
    rows = []
    for sampler, steps, scale in tqdm(settings, desc="evaluate", disable=not progress):
        t0 = time.perf_counter()
        imgs = generate(pipe, captions, sampler, steps, scale, cfg.seed, cfg.batch_size)
        dt = (time.perf_counter() - t0) / len(captions)
        a_seen, attr_seen = _accuracies(oracle, imgs[: len(seen)], seen)
        a_unseen, attr_unseen = _accuracies(oracle, imgs[len(seen):], unseen)
        rows.append(asdict(Row(sampler, steps, scale, a_seen, a_unseen, attr_seen, attr_unseen,
                               float(scorer(imgs, captions).mean()), frechet_distance(oracle.embed(imgs), real_feats), dt)))
        if progress:
            print(f"  {sampler} {steps} steps, scale {scale}: seen {a_seen:.3f} unseen {a_unseen:.3f} ({dt:.3f} s/img)", flush=True)
    return rows


def _split_by_cost(settings: list, jobs: int) -> list[list]:
    """Longest-processing-time-first assignment of settings to `jobs` bins (cost ~ UNet calls)."""
    bins: list[list] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(bins)
    for st in sorted(settings, key=lambda x: -x[1] * (2 if x[2] != 1 else 1)):
        i = load.index(min(load))
        bins[i].append(st)
        load[i] += st[1] * (2 if st[2] != 1 else 1)
    return [b for b in bins if b]


def evaluate(model_dir: str | Path | None = None, cfg: EvalConfig | None = None, device="cpu", progress: bool = True,
             jobs: int = 1) -> dict:
    """Run every measurement; returns a dict (rows of the sweeps, oracle accuracy, VAE PSNR, ...).

    jobs > 1 spreads the settings over that many worker processes (1 torch thread each).
    """
    from lumenkit.t2i.oracle import Oracle, heldout_accuracy

    cfg = cfg or EvalConfig()
    model_dir = Path(model_dir) if model_dir else SHIPPED_MODEL
    pipe = load_pipeline(model_dir, device)
    oracle = Oracle.load(model_dir, device)
    scorer = ClipScorer(model_dir, device)
    scenes = prompt_set(cfg.n_prompts, "train", cfg.seed) + prompt_set(cfg.n_prompts, "heldout", cfg.seed)
    captions = [s.caption() for s in scenes]
    real = D.make_batch(np.random.default_rng([cfg.seed, 3]), cfg.n_real, "all")
    real_feats = oracle.embed(real.images)
    real_same = D.to_tensor(D.render_batch(scenes, np.random.default_rng([cfg.seed, 4])))
    settings = cfg.settings()
    if jobs > 1 and torch.device(device).type == "cpu":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        parts = _split_by_cost(settings, jobs)
        with ProcessPoolExecutor(len(parts), mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_eval_settings, str(model_dir), cfg, part, real_feats, "cpu", progress, 1) for part in parts]
            rows = [r for f in futs for r in f.result()]
        order = {st: i for i, st in enumerate(settings)}
        rows.sort(key=lambda r: order[(r["sampler"], r["steps"], r["scale"])])
    else:
        rows = _eval_settings(str(model_dir), cfg, settings, real_feats, device, progress)
    return {
        "model": str(model_dir),
        "config": asdict(cfg),
        "rows": rows,
        "oracle_accuracy": heldout_accuracy(oracle, n=2000, seed=cfg.seed + 4242, device=device),
        "vae_psnr_db": vae_psnr(pipe.vae.float(), 256, cfg.seed, device),
        "vae_roundtrip_accuracy": vae_roundtrip_accuracy(pipe.vae.float(), oracle, real_same, scenes, device),
        "clip_score_real": float(scorer(real_same, captions).mean()),
        "frechet_real_vs_real": frechet_distance(oracle.embed(real_same), real_feats),
    }


def best_row(result: dict) -> dict:
    return max(result["rows"], key=lambda r: (r["acc_seen"] + r["acc_unseen"], r["acc_seen"]))


def markdown_report(result: dict) -> str:
    """The evaluation as markdown tables (sampler sweep, CFG sweep, summary)."""
    from lumenkit.common.bench import markdown_table

    n = result["config"]["n_prompts"]
    head = ["sampler", "steps", "CFG scale", "prompt acc. seen", "prompt acc. unseen", "CLIP score", "oracle-feature FD", "s / image"]
    rows = [[r["sampler"], r["steps"], r["scale"], f"{100 * r['acc_seen']:.1f}%", f"{100 * r['acc_unseen']:.1f}%",
             f"{r['clip_score']:.2f}", f"{r['frechet']:.2f}", f"{r['seconds_per_image']:.3f}"] for r in result["rows"]]
    best = best_row(result)
    by = {(r["sampler"], r["steps"], r["scale"]): r for r in result["rows"]}
    scale = result["config"]["sweep_scale"]
    ddpm, ddim20 = by.get(("ddpm", 1000, scale)), by.get(("ddim", 20, scale))
    oa = result["oracle_accuracy"]
    lines = [
        f"Prompts: {n} seen (training combinations) and {n} unseen (held-out colour+shape pairs), one image each, same seeds for every setting. "
        f"The oracle-feature FD compares the {2 * n} generated images with {result['config']['n_real']} real ones on 128-d features: "
        "with fewer samples than dimensions the generated covariance is singular, so read it as a rough indicator.",
        "",
        markdown_table(head, rows),
        "",
        markdown_table(
            ["measure", "value", "target"],
            [
                ["best prompt accuracy, seen", f"{100 * best['acc_seen']:.1f}% ({best['sampler']} {best['steps']}, scale {best['scale']})", ">= 90%"],
                ["best prompt accuracy, unseen", f"{100 * best['acc_unseen']:.1f}%", ">= 60%"],
                ["DDIM 20 vs DDPM 1000 (seen+unseen, points)",
                 f"{100 * ((ddim20['acc_seen'] + ddim20['acc_unseen']) - (ddpm['acc_seen'] + ddpm['acc_unseen'])) / 2:+.1f}" if ddpm and ddim20 else "n/a", "within 5"],
                ["VAE reconstruction PSNR", f"{result['vae_psnr_db']:.2f} dB", ">= 30 dB"],
                ["prompt accuracy of VAE round trips of real images (the VAE's ceiling)",
                 f"{100 * result['vae_roundtrip_accuracy']:.1f}%" if "vae_roundtrip_accuracy" in result else "n/a", "diagnostic"],
                ["oracle accuracy on fresh real images (all attributes)", f"{100 * oa['all']:.2f}%", ">= 99%"],
                ["CLIP score of the real images of the same prompts", f"{result['clip_score_real']:.2f}", "reference"],
                ["oracle-feature FD, real vs real (same prompts)", f"{result['frechet_real_vs_real']:.2f}", "reference"],
            ],
        ),
    ]
    return "\n".join(lines)
