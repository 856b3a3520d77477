"""evaluate.part_labels: GT surface points are assigned to the primitive they lie on."""
import numpy as np

from lumenkit.gsir.synth import Part, _T
from lumenkit.gsir.evaluate import part_labels


def test_points_on_known_primitives_get_their_labels():
    parts = [
        Part("cube", _T((0, 0, -0.75), (1.0, 0.8, 0.1)), [0.5] * 3, 0.5, 0.0),
        Part("cylinder", _T((0.2, -0.4, -0.65), (0.3, 0.3, 0.5)), [0.5] * 3, 0.5, 0.0),
        Part("sphere", _T((0.0, 0.3, 0.5), 0.25), [0.5] * 3, 0.5, 0.0),
    ]
    rng = np.random.default_rng(0)
    phi = rng.uniform(0, 2 * np.pi, 50)
    radial = np.stack([np.cos(phi), np.sin(phi), 0 * phi], -1)
    wall = np.array([0.2, -0.4, 0.0]) + 0.3 * radial
    wall[:, 2] = rng.uniform(-0.6, -0.2, 50)
    top = np.stack([rng.uniform(-0.9, 0.9, 50), rng.uniform(0.5, 0.7, 50), np.full(50, -0.65)], -1)  # slab top, off the cup
    d = rng.normal(size=(50, 3))
    ball = np.array([0.0, 0.3, 0.5]) + 0.25 * d / np.linalg.norm(d, axis=1, keepdims=True)
    points = np.concatenate([wall, wall, top, ball])[None]  # [1, 200, 3]
    normals = np.concatenate([radial, -radial, np.tile([0.0, 0.0, 1.0], (50, 1)), d])[None]
    mask = np.ones(points.shape[:2], bool)
    mask[0, -1] = False
    labels = part_labels(parts, points, normals, mask)[0]
    expected = np.repeat([2, 3, 0, 4], 50)
    expected[-1] = -1
    np.testing.assert_array_equal(labels, expected)
