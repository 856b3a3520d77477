"""The VideoMaker synthetic world: identities and their zero-shot split, motions against their closed-form
paths (mask centroids, areas, principal axes), references, captions, seeding, files."""
import json
import math

import numpy as np
import pytest
import torch

from lumenkit.common.config import ConfigError
from lumenkit.common.errors import LumenkitError
from lumenkit.common.train_loop import batch_rng
from lumenkit.video import data as D

SIZE, FRAMES = 64, 8


def ident(shape, pattern, colour="red", colour2="blue"):
    c2 = None if pattern == "solid" else colour2
    return next(i for i in D.IDENTITIES if (i.shape, i.pattern, i.colour, i.colour2) == (shape, pattern, colour, c2))


def clip(identity, motion, seed=0, frames=FRAMES, size=SIZE):
    spec = D.sample_clip(np.random.default_rng(seed), identity.id, motion, frames, size)
    return D.render_clips([spec])


def moments(mask):
    """Area, centroid (x, y) px and principal-axis angle (deg, counter-clockwise on screen, mod 180) of
    coverage masks [..., H, W], pixel centres at +0.5."""
    m = mask.double()
    h, w = m.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64).add(0.5).view(-1, 1)
    xs = torch.arange(w, dtype=torch.float64).add(0.5).view(1, -1)
    a = m.sum((-2, -1))
    cx, cy = (m * xs).sum((-2, -1)) / a, (m * ys).sum((-2, -1)) / a
    dx, dy = xs - cx[..., None, None], -(ys - cy[..., None, None])  # y up
    mxx, myy, mxy = (m * dx * dx).sum((-2, -1)), (m * dy * dy).sum((-2, -1)), (m * dx * dy).sum((-2, -1))
    theta = torch.rad2deg(0.5 * torch.atan2(2 * mxy, mxx - myy))
    return a, cx, cy, theta


def test_identity_count_and_zero_shot_split():
    # 10 shapes x (8 solid + 4 two-colour patterns x 8*7 ordered pairs + checker x 28 unordered pairs)
    assert len(D.IDENTITIES) == 10 * (8 + 4 * 56 + 28) == 2600
    assert [i.id for i in D.IDENTITIES] == list(range(2600))
    assert len({(i.shape, i.pattern, i.colour, i.colour2) for i in D.IDENTITIES}) == 2600
    train, test = set(D.identity_ids("train").tolist()), set(D.identity_ids("test").tolist())
    assert len(test) == 260 and not train & test and train | test == set(range(2600))
    assert all(i.split == "test" for i in D.identities("test"))
    # every shape and pattern occurs among the unseen subjects
    assert {i.shape for i in D.identities("test")} == set(D.SHAPES) and {i.pattern for i in D.identities("test")} == set(D.PATTERNS)
    rng = np.random.default_rng(0)
    assert {s.identity_id for s in D.sample_clips(rng, 3000, "train")} <= train
    assert {s.identity_id for s in D.sample_clips(rng, 500, "test")} <= test


def test_captions_round_trip_and_name_the_motion_and_colours():
    b = D.make_batch(batch_rng(1, 0), 24, "all")
    for j, text in enumerate(b.captions):
        spec = b.specs[j]
        assert D.parse_caption(text) == (spec.identity, spec.motion)
        assert text.endswith(" " + D.MOTION_PHRASES[D.MOTIONS[int(b.motion_ids[j])]])
        named = [w for w in text.split() if w in D.COLOURS]
        # fully covered pixels show the colours the caption names (each of them), apart from the
        # anti-aliased pattern edges inside the sprite
        full = b.masks[j, :, 0] == 1
        px = b.videos[j].permute(0, 2, 3, 1)[full]
        palette = torch.tensor([D.COLOURS[c] for c in named], dtype=torch.float32) / 127.5 - 1
        exact = (px[:, None, :] - palette[None]).abs().amax(-1) < 1e-5
        assert float(exact.any(1).float().mean()) > 0.6 and bool(exact.any(0).all())
        assert named == [spec.identity.colour] + ([spec.identity.colour2] if spec.identity.colour2 else [])
    assert D.caption(ident("star", "stripes"), "left") == "a red star with blue stripes moves left"
    assert D.caption(ident("oval", "border", "orange", "cyan"), "grows") == "an orange oval with a cyan border grows"
    assert D.caption(ident("hexagon", "checker", "green", "yellow"), "spins") == "a green and yellow checkered hexagon spins"
    with pytest.raises(LumenkitError, match="not in the video grammar"):
        D.parse_caption("a red star moves sideways")
    assert set(" ".join(b.captions).split()) <= set(D.caption_vocabulary())


@pytest.mark.parametrize("motion,axis,sign", [("left", 0, -1), ("right", 0, 1), ("up", 1, -1), ("down", 1, 1)])
def test_moves_mask_centroid_follows_the_closed_form_path(motion, axis, sign):
    step = 0.375 * SIZE / (FRAMES - 1)  # 24 px over the clip at 64 px
    for k, shape in enumerate(("arrow", "triangle", "star", "oval")):
        b = clip(ident(shape, "checker"), motion, seed=k)
        _, cx, cy, _ = moments(b.masks[0, :, 0])
        c = torch.stack([cx, cy], 1)
        assert torch.allclose(c, b.positions[0].double(), atol=0.05)  # the mask's centroid is the position
        d = c[1:] - c[:-1]
        assert torch.allclose(d[:, axis], torch.full((FRAMES - 1,), sign * step, dtype=torch.float64), atol=0.05)
        assert float(d[:, 1 - axis].abs().max()) < 0.05
        # the sprite stays inside the frame: nothing on the border rows and columns
        m = b.masks[0, :, 0]
        assert float(m[:, 0].sum() + m[:, -1].sum() + m[:, :, 0].sum() + m[:, :, -1].sum()) == 0


@pytest.mark.parametrize("motion", ["grows", "shrinks"])
def test_grows_and_shrinks_scale_the_area_by_scale_squared(motion):
    ratio = (1.2 / 0.7) ** 2 if motion == "grows" else (0.7 / 1.2) ** 2
    for k, shape in enumerate(("square", "cross", "hexagon")):
        b = clip(ident(shape, "dots"), motion, seed=k)
        area, cx, cy, _ = moments(b.masks[0, :, 0])
        assert abs(float(area[-1] / area[0]) - ratio) < 0.01 * ratio
        assert float((torch.stack([cx, cy], 1) - b.positions[0].double()).abs().max()) < 0.05
    # a solid circle's area is pi (0.9 r)^2, r = 0.24 * size * scale, on every frame
    b = clip(ident("circle", "solid"), motion, seed=7)
    area = b.masks[0, :, 0].double().sum((-2, -1))
    r = 0.9 * 0.24 * SIZE * b.scales[0].double()
    assert torch.allclose(area, math.pi * r * r, rtol=3e-3)


@pytest.mark.parametrize("shape", ["oval", "arrow", "diamond"])
def test_spins_keep_the_area_and_turn_the_principal_axis(shape):
    b = clip(ident(shape, "stripes"), "spins", seed=3)
    area, cx, cy, theta = moments(b.masks[0, :, 0])
    assert float(area.max() / area.min()) < 1.01
    turned = (theta - theta[0]).numpy()
    expected = 180.0 * np.arange(FRAMES) / (FRAMES - 1)  # counter-clockwise, 180 degrees over the clip
    err = (turned - expected + 90) % 180 - 90  # axes are defined mod 180
    assert np.abs(err).max() < 0.5, (turned, expected)
    assert float((torch.stack([cx, cy], 1) - b.positions[0].double()).abs().max()) < 0.05


def test_still_clips_are_still_and_moving_clips_move():
    b = clip(ident("star", "rings"), "still")
    assert bool((b.videos[0] == b.videos[0, :1]).all())
    for motion in ("spins", "grows", "left"):
        b = clip(ident("square", "solid"), motion)  # a 180-degree spin brings the square back on the last frame
        assert float((b.videos[0, 1:-1] - b.videos[0, :1]).abs().amax((1, 2, 3)).min()) > 0.1
    # rotation-invariant sprites never get "spins"
    rng = np.random.default_rng(4)
    circles = [i.id for i in D.IDENTITIES if i.rotation_invariant]
    assert len(circles) == 8 + 56 + 56
    assert all(D.sample_clip(rng, i).motion != "spins" for i in circles * 3)


def test_same_seed_and_step_give_bit_identical_batches():
    a = D.make_batch(batch_rng(7, 3), 6, frames=FRAMES, size=32)
    b = D.make_batch(batch_rng(7, 3), 6, frames=FRAMES, size=32)
    c = D.make_batch(batch_rng(7, 4), 6, frames=FRAMES, size=32)
    for name in ("videos", "masks", "references", "positions", "scales", "angles", "identity_ids", "motion_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.captions == b.captions
    assert not torch.equal(a.videos, c.videos) and a.captions != c.captions
    # rows of a batch render exactly the full batch's rows (distributed micro-batches)
    part = D.make_batch(batch_rng(7, 3), 6, frames=FRAMES, size=32, rows=slice(2, 5))
    assert torch.equal(part.videos, a.videos[2:5]) and part.captions == a.captions[2:5]


def test_batch_shapes_and_ranges():
    b = D.make_batch(batch_rng(0, 0), 5, "test", frames=12, size=48)
    assert b.videos.shape == (5, 12, 3, 48, 48) and b.videos.dtype == torch.float32
    assert b.masks.shape == (5, 12, 1, 48, 48) and b.references.shape == (5, 3, 48, 48)
    assert b.positions.shape == (5, 12, 2) and b.scales.shape == (5, 12) and b.angles.shape == (5, 12)
    assert float(b.videos.min()) >= -1 and float(b.videos.max()) <= 1 and float(b.references.abs().max()) <= 1
    assert float(b.masks.min()) == 0 and float(b.masks.max()) == 1
    assert bool(((b.masks > 0) & (b.masks < 1)).any())  # anti-aliased edges
    assert set(b.identity_ids.tolist()) <= set(D.identity_ids("test").tolist())
    # frame = sprite + background * (1 - mask): off the sprite the frame is the background
    off = (b.masks == 0).expand_as(b.videos)
    assert torch.equal(b.videos[off], b.backgrounds[:, None].expand_as(b.videos)[off])
    kinds = {s.background.kind for s in D.make_batch(batch_rng(0, 1), 30, size=32).specs}
    assert kinds == set(D.BACKGROUND_KINDS)


def test_reference_is_the_subject_cut_out_of_a_frame():
    b = D.make_batch(batch_rng(2, 0), 12)
    for j in range(len(b)):
        k = int(b.reference_frames[j])
        dx, dy = b.reference_shifts[j].tolist()
        m = b.masks[j, k, 0]
        ys, xs = torch.nonzero(m == 1, as_tuple=True)
        assert len(ys) > 50
        assert torch.equal(b.references[j][:, ys + dy, xs + dx], b.videos[j, k][:, ys, xs])
        assert torch.equal(b.reference_masks[j, 0], torch.roll(m, (dy, dx), (0, 1)))
        # off the subject a plain grey; the subject sits at the centre
        off = b.reference_masks[j, 0] == 0
        grey = b.references[j][:, off]
        assert float((grey - grey[0, 0]).abs().max()) < 1e-6
        _, cx, cy, _ = moments(b.reference_masks[j, 0])
        assert abs(float(cx) - SIZE / 2) <= 0.5 and abs(float(cy) - SIZE / 2) <= 0.5


def test_distinct_identities_render_distinct_sprites():
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.choice(2600, 120, replace=False)]
    # the closest pairs: one attribute apart, and the closest colours of the palette
    ids += [ident("star", "dots", "red", c).id for c in ("orange", "pink", "purple")]
    ids += [ident("star", "dots", "yellow", "orange").id, ident("star", "dots", "orange", "yellow").id]
    ids += [ident(s, "stripes", "yellow", "orange").id for s in ("pentagon", "hexagon", "circle")]
    ids += [ident("square", p, "green", "cyan").id for p in ("solid", "stripes", "dots", "rings", "border", "checker")]
    ids = list(dict.fromkeys(ids))
    img, mask = D.render_sprites(ids)
    assert img.shape == (len(ids), 3, SIZE, SIZE) and mask.shape == (len(ids), 1, SIZE, SIZE)
    flat = img.flatten(2)  # [N, 3, H*W]
    # per pair: pixels whose largest RGB difference is > 0.1 of the range
    n_diff = torch.stack([((flat[i] - flat).abs().amax(1) > 0.2).sum(-1) for i in range(len(ids))])
    n_diff.fill_diagonal_(10**6)
    assert int(n_diff.min()) >= 50, int(n_diff.min())  # 112 for this sample


def test_bad_arguments_name_the_flag():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="--frames 0"):
        D.make_batch(rng, 2, frames=0)
    with pytest.raises(ConfigError, match="--size 30"):
        D.make_batch(rng, 2, size=30)
    with pytest.raises(ConfigError, match="--split 'val'"):
        D.identity_ids("val")
    with pytest.raises(ConfigError, match="--n 0"):
        D.DataConfig(out="x", n=0)


def test_write_dataset(tmp_path):
    from lumenkit.common.images import read_image, read_png_text

    meta = D.write_dataset(D.DataConfig(out=str(tmp_path), n=3, seed=5, frames=4, size=32))
    rows = [json.loads(l) for l in meta.read_text().splitlines()]
    b = D.make_batch(batch_rng(5, 0), 3, "all", 4, 32)
    assert [r["text"] for r in rows] == b.captions
    for j, r in enumerate(rows):
        folder = tmp_path / r["clip"]
        for t in range(4):
            frame = torch.from_numpy(read_image(folder / f"frame_{t:02d}.png")).permute(2, 0, 1) * 2 - 1
            assert float((frame - b.videos[j, t]).abs().max()) <= 1 / 127.5 + 1e-6
            mask = torch.from_numpy(read_image(folder / f"mask_{t:02d}.png"))[..., 0]
            assert float((mask - b.masks[j, t, 0]).abs().max()) <= 0.5 / 255 + 1e-6
        assert read_image(folder / "reference.png").shape == (32, 32, 3)
        assert read_image(folder / "strip.png").shape == (32, 32 * 5, 3)
        assert read_png_text(folder / "frame_00.png")["caption"] == r["text"]
        assert np.allclose(r["positions"], b.positions[j].numpy(), atol=1e-4)
        assert D.parse_caption(r["text"]) == (D.IDENTITIES[r["identity_id"]], r["motion"])
