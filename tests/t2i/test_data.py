"""The shapes world: captions <-> attributes, held-out split, rendering ground truth, dataset files."""
import json

import numpy as np
import pytest

from lumenkit.common.errors import LumenkitError
from lumenkit.t2i import data as D


def test_split_sizes_and_partition():
    train, held, every = D.all_scenes("train"), D.all_scenes("heldout"), D.all_scenes("all")
    assert len(every) == 4 * 8 * 2 * 5 * 3
    assert len(held) == len(D.HELDOUT_PAIRS) * 2 * 5 * 3
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(every)


def test_heldout_pairs_never_in_training_split():
    rng = np.random.default_rng(0)
    for s in D.sample_scenes(rng, 3000, "train", two_objects=0.5):
        for o in s.objects:
            assert (o.colour, o.shape) not in D.HELDOUT_PAIRS
    assert all(s.heldout for s in D.sample_scenes(rng, 200, "heldout"))


def test_caption_round_trip_every_scene_and_two_objects():
    for s in D.all_scenes("all"):
        assert D.parse_caption(s.caption()) == s
    rng = np.random.default_rng(1)
    two = [s for s in D.sample_scenes(rng, 300, "all", two_objects=1.0)]
    assert all(len(s.objects) == 2 and s.objects[0].position != s.objects[1].position for s in two)
    for s in two:
        assert D.parse_caption(s.caption()) == s
    assert D.parse_caption("a small red circle on the left on a white background").objects[0].colour == "red"


@pytest.mark.parametrize("bad", ["a red circle", "a small red hexagon on the left on a white background", "a small red circle on the left on a white"])
def test_parse_caption_rejects_text_outside_the_grammar(bad):
    with pytest.raises(LumenkitError, match="is not in the shapes grammar"):
        D.parse_caption(bad)


def test_render_ground_truth_colours_positions_and_antialiasing():
    for s in D.all_scenes("all")[::7]:
        img = D.render_scene(s).astype(int)
        assert img.shape == (64, 64, 3) and img.dtype == np.int64
        o = s.objects[0]
        cx, cy = D.POSITIONS[o.position]
        # the object's colour at its centre, the background's in the far corner from it
        assert np.abs(img[int(cy), int(cx)] - D.COLOURS[o.colour]).max() <= 2
        corner = (0 if cy > 32 else 63, 0 if cx > 32 else 63)
        assert np.abs(img[corner] - D.BACKGROUNDS[s.background]).max() <= 2
        # anti-aliased edges: some pixels are neither object nor background colour
        obj = np.abs(img - D.COLOURS[o.colour]).max(-1) <= 2
        bg = np.abs(img - D.BACKGROUNDS[s.background]).max(-1) <= 2
        assert (~obj & ~bg).sum() > 4
        # large objects cover more pixels than small ones
    small = D.render_scene(D.parse_caption("a small red square in the centre on a white background"))
    large = D.render_scene(D.parse_caption("a large red square in the centre on a white background"))
    count = lambda im: (np.abs(im.astype(int) - D.COLOURS["red"]).max(-1) <= 40).sum()
    assert count(large) > 2.5 * count(small)


def test_seeded_batches_are_reproducible():
    a = D.make_batch(np.random.default_rng(5), 16)
    b = D.make_batch(np.random.default_rng(5), 16)
    assert a.captions == b.captions and bool((a.images == b.images).all())
    assert a.images.shape == (16, 3, 64, 64) and float(a.images.min()) >= -1 and float(a.images.max()) <= 1


def test_write_dataset(tmp_path):
    from lumenkit.common.images import read_image

    meta = D.write_dataset(tmp_path, 6, seed=3)
    lines = [json.loads(l) for l in meta.read_text().splitlines()]
    assert len(lines) == 6
    for l in lines:
        img = read_image(tmp_path / l["file_name"])
        assert img.shape == (64, 64, 3)
        assert D.parse_caption(l["text"]) == D.Scene.from_json(l)
    with pytest.raises(LumenkitError, match="--n 0: must be a positive number"):
        D.write_dataset(tmp_path / "none", 0)
    assert not (tmp_path / "none").exists()
