"""Weight masks and cuts by axis roles, against plain numpy references (no framework)."""

import numpy as np
import pytest

from filterprune.core.analysis import AnalysisOptions, analyze
from filterprune.core.graph import Graph, Node
from filterprune.core.weights import filters_first, slice_weight, weight_mask

RNG = np.random.default_rng(0)


def _grouped_reference(w_oi, keep_out, keep_in, groups):
    """Torch layout (out, in/groups, k): cut rows, then each row's group columns."""
    n_out = w_oi.shape[0]
    rows = []
    for o in np.flatnonzero(keep_out):
        g = o // (n_out // groups)
        cols = np.flatnonzero(keep_in.reshape(groups, -1)[g])
        rows.append(w_oi[o, cols])
    return np.stack(rows)


def test_plain_conv_in_keras_and_torch_layouts_agree():
    w = RNG.normal(size=(3, 3, 6, 8))  # Keras (kh, kw, in, out)
    keep = {"out": RNG.random(8) > 0.4, "in": RNG.random(6) > 0.3}
    keras_cut = slice_weight(w, (None, None, "in", "out"), keep)
    torch_w = np.transpose(w, (3, 2, 0, 1))
    torch_cut = slice_weight(torch_w, ("out", "in", None, None), keep)
    np.testing.assert_array_equal(np.transpose(keras_cut, (3, 2, 0, 1)), torch_cut)
    mask = weight_mask(w.shape, (None, None, "in", "out"), keep)
    assert mask.shape == (1, 1, 6, 8)
    expected = np.outer(keep["in"], keep["out"]).astype(np.float32)
    np.testing.assert_array_equal(mask[0, 0], expected)


@pytest.mark.parametrize("layout", ["torch", "keras"])
def test_grouped_conv_cut_and_mask(layout):
    groups, cin, cout = 4, 8, 12
    w = RNG.normal(size=(cout, cin // groups, 3))  # torch (out, in/groups, k)
    keep_in = np.array([1, 0, 0, 1, 1, 0, 0, 1], bool)  # one column dropped per group
    keep_out = RNG.random(cout) > 0.3
    keep = {"out": keep_out, "in": keep_in}
    expected = _grouped_reference(w, keep_out, keep_in, groups)
    if layout == "torch":
        roles, weight = ("out", "in", None), w
        cut = slice_weight(weight, roles, keep, groups)
    else:
        roles, weight = (None, "in", "out"), np.transpose(w, (2, 1, 0))  # (k, in/groups, out)
        cut = np.transpose(slice_weight(weight, roles, keep, groups), (2, 1, 0))
    np.testing.assert_array_equal(cut, expected)
    mask = weight_mask(weight.shape, roles, keep, groups)
    masked = np.broadcast_to(mask, weight.shape) * weight
    assert np.count_nonzero(masked) == expected.size  # random weights have no zeros


def test_uneven_groups_are_rejected():
    w = np.ones((4, 2, 1))
    keep = {"out": np.ones(4, bool), "in": np.array([1, 1, 1, 0], bool)}
    with pytest.raises(ValueError, match="same number of channels in every group"):
        slice_weight(w, ("out", "in", None), keep, groups=2)


def test_depthwise_kernel_follows_its_input_channels():
    w = RNG.normal(size=(3, 3, 4, 2))  # Keras depthwise (kh, kw, in, multiplier)
    keep = {"in": np.array([1, 0, 1, 1], bool), "out": np.repeat([1, 0, 1, 1], 2).astype(bool)}
    assert slice_weight(w, (None, None, "in", None), keep).shape == (3, 3, 3, 2)
    assert filters_first(w, (None, None, "in", "out")).shape == (2, 3, 3, 4)


def _reshape_graph(target, rewritable):
    g = Graph()
    g.add(Node("x", "input", shape=(1, 8)))
    g.add(Node("fc", "linear", ["x"], (1, 16), layer="fc",
               attrs={"in_features": 8, "out_features": 16}))  # fmt: skip
    g.add(Node("r", "reshape", ["fc"], target,
               attrs={"fixed_dims": list(range(1, len(target))), "rewritable": rewritable}))
    g.add(Node("flat", "reshape", ["r"], (1, 16)))
    g.add(Node("out", "linear", ["flat"], (1, 4), layer="out",
               attrs={"in_features": 16, "out_features": 4}))  # fmt: skip
    g.outputs = ["out"]
    return analyze(g, AnalysisOptions(prune_first_conv=True))


def test_rewritable_reshape_leaves_one_literal_axis_free():
    assert _reshape_graph((1, 1, 1, 16), rewritable=False).groups[0].reason is not None
    free = _reshape_graph((1, 1, 1, 16), rewritable=True)
    assert free.groups[0].prunable and free.groups[0].size == 16
    split = _reshape_graph((1, 4, 4), rewritable=True)  # channels on two literal axes
    group = split.groups[0]
    assert group.prunable and group.size == 4  # axis 1 pinned: the 4 columns of axis 2
    kept = {group.id: np.array([1, 0, 1, 1], bool)}
    ids = split.state.values["r"]
    mask = np.broadcast_to(split.kept_ids(ids, kept), (1, 4, 4))
    assert mask.sum() == 12 and mask[0, :, 1].sum() == 0  # a box: 4 rows x 3 columns
