"""Tests of lumenkit.t2i. Helpers shared by the test modules live here."""
from __future__ import annotations

import json
from pathlib import Path

WORDS = ("a", "red", "blue", "green", "circle", "square", "triangle", "small", "large", "on", "the", "left", "right", "photo", "of", "cat", "blurry")


def write_test_tokenizer(folder: str | Path, words=WORDS) -> Path:
    """A tiny CLIP-format BPE tokenizer (vocab.json + merges.txt) whose merges spell out `words`.

    Every lowercase letter (and its word-final '</w>' form) is in the vocabulary, so any lowercase
    text tokenizes; the listed words become single tokens. Ids 0 and 1 are <|startoftext|>/<|endoftext|>.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<|startoftext|>", "<|endoftext|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += letters + [c + "</w>" for c in letters]
    merges = []
    for w in words:
        if len(w) < 2:
            continue
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        cur = syms[0]
        for s in syms[1:]:
            pair = f"{cur} {s}"
            if pair not in merges:
                merges.append(pair)
            cur = cur + s
            if cur not in vocab:
                vocab.append(cur)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=16,
    )
    tok.save_pretrained(str(folder))
    return folder


def tiny_pipeline(root: str | Path):
    """The tiny random SD of these tests (preset 'tiny', seed 0, the test tokenizer written under root/tok)."""
    from lumenkit.t2i.pipeline import Text2Image

    return Text2Image.from_preset("tiny", write_test_tokenizer(Path(root) / "tok"), "cpu", seed=0)


def assert_modules_equal(a, b) -> None:
    """Two Text2Image pipelines hold bit-identical UNet, VAE and text-encoder weights."""
    import torch

    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"
