"""The BPE tokenizer we learn is read by transformers' CLIPTokenizer (an independent implementation)."""
import json

from transformers import CLIPTokenizer

from lumenkit.t2i import data as D
from lumenkit.t2i.tokenizer import BOS, EOS, bytes_to_unicode, learn_merges, load_tokenizer, tokenize, write_tokenizer


def test_every_caption_word_is_one_token(tmp_path):
    write_tokenizer(tmp_path, max_length=32)
    for tok in (load_tokenizer(tmp_path), CLIPTokenizer.from_pretrained(str(tmp_path))):
        for w in D.caption_vocabulary():
            ids = tok(w, add_special_tokens=False).input_ids
            assert tok.convert_ids_to_tokens(ids) == [w + "</w>"], w
        cap = D.all_scenes("all")[123].caption()
        ids = tok(cap).input_ids
        assert tok.convert_ids_to_tokens(ids) == [BOS] + [w + "</w>" for w in cap.split()] + [EOS]
        assert tok.decode(ids, skip_special_tokens=True).strip() == cap


def test_vocab_layout_like_clip(tmp_path):
    write_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    n = len(vocab)
    assert vocab[BOS] == n - 2 and vocab[EOS] == n - 1
    base = list(bytes_to_unicode().values())
    assert [vocab[c] for c in base] == list(range(256))
    assert sorted(vocab.values()) == list(range(n))
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_unknown_words_fall_back_to_bytes_and_padding(tmp_path):
    write_tokenizer(tmp_path, max_length=32)
    tok = load_tokenizer(tmp_path)
    ids = tok("a zebra!").input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "azebra!"
    batch = tokenize(tok, ["a red star", "a small red circle on the left on a white background"])
    assert batch.shape == (2, 32) and int(batch[0, -1]) == tok.eos_token_id == tok.pad_token_id


def test_learn_merges_reduces_each_word_to_one_symbol():
    words = ["lower", "lowest", "newer", "wider", "low"]
    merges = learn_merges(words)
    ranks = {m: i for i, m in enumerate(merges)}
    for w in words:  # replay the merges as a BPE encoder does (lowest rank first)
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        while len(syms) > 1:
            pairs = [(ranks.get((a, b), 1e9), i) for i, (a, b) in enumerate(zip(syms, syms[1:]))]
            r, i = min(pairs)
            if r == 1e9:
                break
            syms[i : i + 2] = [syms[i] + syms[i + 1]]
        assert syms == [w + "</w>"]
