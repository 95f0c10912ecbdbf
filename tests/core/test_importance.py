"""Filter importance against independent plain-Python references."""

import math

import numpy as np
import pytest
from core_fixtures import registries  # noqa: F401 - fixture

from filterprune.core.importance import (
    filter_importance,
    get_importance,
    list_importances,
    normalize,
    register_importance,
)
from filterprune.errors import ConfigError


def _rows(weight, axis):
    """Filters as lists of Python floats, by explicit index loops (no numpy reductions)."""
    moved = np.moveaxis(weight, axis, 0)
    return [[float(v) for v in moved[i].ravel().tolist()] for i in range(moved.shape[0])]


def ref_l1(weight, axis=0):
    return [sum(abs(v) for v in row) for row in _rows(weight, axis)]


def ref_l2(weight, axis=0):
    return [math.sqrt(sum(v * v for v in row)) for row in _rows(weight, axis)]


def ref_geometric_median(weight, axis=0):
    rows = _rows(weight, axis)
    out = []
    for a in rows:
        total = 0.0
        for b in rows:
            total += math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
        out.append(total)
    return out


REFERENCES = {"L1": ref_l1, "L2": ref_l2, "geometric_median": ref_geometric_median}


@pytest.mark.parametrize("kind", ["L1", "L2", "geometric_median"])
@pytest.mark.parametrize(
    ("shape", "axis"),
    [((8, 3, 3, 3), 0), ((3, 3, 4, 6), -1), ((5, 7), 0), ((7, 5), 1), ((6,), 0), ((4, 2, 5), 1)],
)
def test_against_plain_python(kind, shape, axis):
    rng = np.random.default_rng(sum(shape) + axis)
    weight = rng.normal(size=shape).astype(np.float32)
    got = filter_importance(weight, kind, axis=axis)
    assert got.dtype == np.float64 and got.shape == (shape[axis],)
    np.testing.assert_allclose(got, REFERENCES[kind](weight, axis), rtol=1e-9, atol=1e-9)


def test_geometric_median_hand_computed():
    weight = np.zeros((3, 2, 1, 1))
    weight[:, 0, 0, 0] = [0.0, 1.0, 3.0]
    assert filter_importance(weight, "geometric_median").tolist() == [4.0, 3.0, 5.0]


def test_geometric_median_identical_and_large_offset_filters():
    weight = np.full((4, 10), 1e4)
    weight[3] += 1.0  # three identical filters, one at distance sqrt(10)
    got = filter_importance(weight, "geometric_median")
    d = math.sqrt(10.0)
    np.testing.assert_allclose(got, [d, d, d, 3 * d], rtol=1e-9)


def test_geometric_median_blocks_match_reference(monkeypatch):
    import filterprune.core.importance as importance

    monkeypatch.setattr(importance, "_BLOCK_BYTES", 8 * 13 * 3)  # 3-row blocks
    weight = np.random.default_rng(0).normal(size=(13, 2, 3))
    np.testing.assert_allclose(filter_importance(weight, "geometric_median"),
                               ref_geometric_median(weight), rtol=1e-9)


def test_geometric_median_large_layer_is_fast_and_finite():
    weight = np.random.default_rng(1).normal(size=(2048, 512, 3, 3)).astype(np.float32)
    got = filter_importance(weight, "geometric_median")
    assert got.shape == (2048,) and np.all(np.isfinite(got)) and np.all(got > 0)
    # Spot-check two filters against a direct numpy computation.
    flat = weight.reshape(2048, -1).astype(np.float64)
    for i in (0, 1234):
        assert got[i] == pytest.approx(np.linalg.norm(flat - flat[i], axis=1).sum(), rel=1e-9)


def test_integer_weights_and_single_filter():
    assert filter_importance(np.array([[1, -2], [3, 4]]), "L1").tolist() == [3.0, 7.0]
    assert filter_importance(np.ones((1, 4)), "geometric_median").tolist() == [0.0]


def test_invalid_arguments():
    with pytest.raises(ConfigError, match=r"`filter_importance` must be one of 'L1', 'L2', "
                       r"'geometric_median'.*Received: filter_importance='L3'\."):
        filter_importance(np.ones((2, 2)), "L3")
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 2\) for a weight of shape "
                       r"\(2, 2\)\. Received: axis=2\."):
        filter_importance(np.ones((2, 2)), "L1", axis=2)
    with pytest.raises(ValueError, match=r"`weight` must have at least 1 dimension"):
        filter_importance(np.float32(1.0), "L1")
    with pytest.raises(TypeError, match=r"`weight` must hold real numbers\. Received: dtype=bool"):
        filter_importance(np.ones((2, 2), dtype=bool), "L1")


def test_registry(registries):
    assert list_importances()[:3] == ["L1", "L2", "geometric_median"]
    name = "test_max_abs"

    @register_importance(name)
    def max_abs(filters):
        return np.abs(filters).max(axis=1)

    assert get_importance(name) is max_abs
    assert filter_importance(np.array([[1.0, -5.0], [2.0, 0.0]]), name).tolist() == [5.0, 2.0]
    with pytest.raises(ValueError, match="'L1' is already registered"):
        register_importance("L1")(max_abs)


def test_normalize():
    assert normalize(np.array([1.0, 4.0, 2.0])).tolist() == [0.25, 1.0, 0.5]
    assert normalize(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    assert normalize(np.array([])).shape == (0,)
    assert normalize(np.array([-2.0, 1.0])).tolist() == [-1.0, 0.5]
    scores = np.array([3.0, 6.0])
    normalize(scores)
    assert scores.tolist() == [3.0, 6.0]  # input untouched
