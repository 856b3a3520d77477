"""A CLIP-compatible byte-level BPE tokenizer learned from the shapes caption vocabulary.

Writes the two files of OpenAI CLIP / Stable Diffusion's `tokenizer/` folder, so that the very same
`transformers.CLIPTokenizer` code serves our small model and a real SD checkpoint:

- vocab.json   {token: id}: the 256 byte-level symbols (GPT-2/CLIP ``bytes_to_unicode`` alphabet),
               the same 256 with the end-of-word marker ``</w>``, one token per learned merge, then
               ``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids (as in CLIP, where
               they are 49406 and 49407);
- merges.txt   ``#version: 0.2`` then one ``left right`` merge per line, in rank order.

The merges are learned by ordinary BPE (Sennrich et al. 2016) on the caption words, run until every
word is one symbol: so every caption word encodes to exactly one token, and any other text still
encodes (byte fallback) without unknown tokens.
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable

from lumenkit.common.errors import LumenkitError
from lumenkit.common.fileio import atomic_write_json, atomic_write_text

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(words: Iterable[str], counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """BPE merges (in rank order) that reduce every word to a single ``word</w>`` symbol.

    Words are byte-encoded with bytes_to_unicode; the most frequent adjacent pair (ties broken by the
    pair itself, for determinism) is merged each round until no word has two symbols left.
    """
    b2u = bytes_to_unicode()
    vocab: dict[tuple[str, ...], int] = {}
    for w in words:
        syms = [b2u[b] for b in w.lower().encode("utf-8")]
        if not syms:
            continue
        syms[-1] += "</w>"
        vocab[tuple(syms)] = vocab.get(tuple(syms), 0) + (counts or {}).get(w, 1)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for syms, c in vocab.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += c
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_vocab = {}
        for syms, c in vocab.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            new_vocab[tuple(out)] = c
        vocab = new_vocab


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes+</w>, merged symbols, then the two special tokens."""
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges]
    seen: dict[str, int] = {}
    for t in tokens:
        seen.setdefault(t, len(seen))
    seen[BOS] = len(seen)
    seen[EOS] = len(seen)
    return seen


def write_tokenizer(out: str | Path, words: Iterable[str] | None = None, max_length: int = 32) -> Path:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json into `out`.

    `words` defaults to the shapes caption vocabulary; `max_length` is the padded prompt length
    (tokenizer.model_max_length; 77 in SD 1.x, 32 in the `shapes` preset).
    """
    if words is None:
        from lumenkit.t2i.data import caption_vocabulary

        words = caption_vocabulary()
    words = sorted(set(words))
    merges = learn_merges(words)
    vocab = build_vocab(merges)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "vocab.json", vocab)
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    atomic_write_json(
        out / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS},
    )
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": int(max_length),
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": EOS,
            "pad_token": EOS,
            "do_lower_case": True,
        },
    )
    return out


def load_tokenizer(folder: str | Path):
    """transformers.CLIPTokenizer from a tokenizer folder (ours or SD's: vocab.json + merges.txt, or a
    tokenizer.json; special tokens and model_max_length from its tokenizer_config.json), local files only."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise LumenkitError(f"{folder}: no such tokenizer folder")
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not has_bpe and not (folder / "tokenizer.json").is_file():
        raise LumenkitError(f"{folder}: not a CLIP tokenizer folder (needs vocab.json and merges.txt)")
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LumenkitError(f"{folder}: cannot read the CLIP tokenizer ({first})") from None


def save_tokenizer(tokenizer, folder: str | Path) -> Path:
    """Save a CLIPTokenizer in the classic SD layout: vocab.json + merges.txt + tokenizer_config.json +
    special_tokens_map.json (transformers 5 alone writes only tokenizer.json; we keep that too)."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not (folder / "vocab.json").is_file():
        model = json.loads(backend.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    if not (folder / "special_tokens_map.json").is_file():
        special = {k: str(getattr(tokenizer, k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(tokenizer, k, None)}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return folder


def tokenizer_files(tokenizer) -> dict[str, str]:
    """{filename: text} of the saved tokenizer folder (stored inside our single-file checkpoints)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tokenizer, tmp)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


def tokenizer_from_files(files: dict[str, str]):
    """The CLIPTokenizer of {filename: text} (the inverse of tokenizer_files)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            Path(tmp, Path(name).name).write_text(text, encoding="utf-8")
        return load_tokenizer(tmp)


def tokenize(tokenizer, prompts: list[str], max_length: int | None = None):
    """Prompts -> input ids [B, K] long (padded with <|endoftext|> to K = model_max_length, truncated)."""
    enc = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return enc.input_ids
