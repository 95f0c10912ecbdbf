"""`input_info.type`, `filler` and `keyword` shape the example inputs (issue 13, item 5)."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from filterprune import NNCFConfig
from filterprune.errors import ConfigError
from filterprune.torch import create_compressed_model
from filterprune.torch.frontend import sample_inputs


def _config(input_info):
    algo = {"algorithm": "filter_pruning", "params": {"prune_first_conv": True}}
    return NNCFConfig.from_dict({"input_info": input_info, "compression": algo})


class Tokens(nn.Module):
    """Token ids in (an integer input), a mask passed by keyword, a conv over the embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(4, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.head = nn.Conv1d(16, 4, 1)

    def forward(self, ids, scale=None, mask=None):
        x = self.emb(ids).transpose(1, 2) * mask.unsqueeze(1)
        return self.head(torch.relu(self.conv(x)))


def test_type_gives_the_dtype_and_an_integer_model_traces():
    config = _config([{"sample_size": [2, 8], "type": "long"},
                      {"sample_size": [2, 8], "keyword": "mask", "filler": "ones"}])
    ctrl, _ = create_compressed_model(Tokens(), config)  # a float zero input fails in emb
    ids, scale, mask = ctrl.captured.sample
    assert ids.dtype == torch.int64 and scale is None
    assert mask.dtype == torch.float32 and bool((mask == 1).all())
    assert ctrl.statistics().full_filters == 16


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float", torch.float32), ("half", torch.float16), ("bfloat16", torch.bfloat16),
     ("double", torch.float64), ("int", torch.int32), ("bool", torch.bool)],
)
def test_type_names(name, dtype):
    (x,) = sample_inputs(_config({"sample_size": [1, 3], "type": name}), nn.Linear(3, 2))
    assert x.dtype == dtype and x.shape == (1, 3)


def test_fillers_and_seeded_random():
    net = nn.Linear(3, 2)
    zeros, ones, rand = (sample_inputs(_config([{"sample_size": [2, 3], "filler": f}]), net)[0]
                         for f in ("zeros", "ones", "random"))  # fmt: skip
    assert not zeros.any() and bool((ones == 1).all())
    assert 0 <= float(rand.min()) and float(rand.max()) < 1 and rand.std() > 0
    again = sample_inputs(_config([{"sample_size": [2, 3], "filler": "random"}]), net)[0]
    assert torch.equal(rand, again)
    ints = sample_inputs(_config({"sample_size": [64], "type": "long", "filler": "random"}), net)
    assert set(ints[0].tolist()) == {0, 1}


def test_unknown_type_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"^`input_info\[1\]\.type` must be one of 'float'.*"
                       r"Received: type='lng'\. Did you mean `long`\?"):
        sample_inputs(_config([{"sample_size": [1, 3]}, {"sample_size": [1, 3], "type": "lng"}]),
                      nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("infos", "message"),
    [
        ([{"sample_size": [2, 8], "type": "long"}, {"sample_size": [2, 8], "keyword": "masks"}],
         r"^`input_info\[1\]\.keyword` must name an argument of Tokens\.forward\(ids, scale, "
         r"mask\)\. Received: keyword='masks'\."),
        ([{"sample_size": [2, 8], "type": "long"}, {"sample_size": [2, 8], "keyword": "ids"}],
         r"^`input_info\[1\]\.keyword` must name an argument not given by position\. Received: "
         r"keyword='ids', which input_info\[0\] fills already\."),
        ([{"sample_size": [2, 8], "keyword": "mask"}],
         r"^`input_info` must give argument 'ids' of Tokens\.forward\(ids, scale, mask\)"),
    ],
)
def test_bad_keywords_are_refused(infos, message):
    with pytest.raises(ConfigError, match=message):
        sample_inputs(_config(infos), Tokens())


def test_without_the_new_keys_inputs_are_float_zeros_by_position():
    xs = sample_inputs(_config([{"sample_size": [1, 3]}, {"sample_size": [2, 5]}]), Tokens())
    assert [tuple(x.shape) for x in xs] == [(1, 3), (2, 5)]
    assert all(x.dtype == torch.float32 and not x.any() for x in xs)


INFO_VALUES = st.sampled_from([None, "", "float", "long", "half", "bool", "int8", "zeros",
                               "ones", "random", "ids", "scale", "mask", "self", "x", 3, 0.5,
                               [], {}])  # fmt: skip


@settings(max_examples=100, deadline=None, derandomize=True)
@given(entries=st.lists(st.fixed_dictionaries(
    {"sample_size": st.lists(st.integers(1, 3), min_size=1, max_size=3)},
    optional={"type": INFO_VALUES, "filler": INFO_VALUES, "keyword": INFO_VALUES}),
    min_size=1, max_size=3))  # fmt: skip
def test_fuzzed_input_info_gives_inputs_or_our_error(entries):
    try:
        config = NNCFConfig.from_dict({"input_info": entries,
                                       "compression": {"algorithm": "filter_pruning"}})
        xs = sample_inputs(config, Tokens())
    except ConfigError as err:
        assert re.search(r"`input_info[^`]*`", str(err)), str(err)
        return
    assert len(xs) >= len(entries)


def test_more_entries_than_forward_takes_are_refused():
    """Accepted before, then a bare TypeError at export."""
    with pytest.raises(ConfigError, match=r"^`input_info` must have at most one entry per "
                       r"argument of Linear\.forward \(input\)\. Received: 2 entries\."):
        sample_inputs(_config([{"sample_size": [1, 3]}, {"sample_size": [1, 3]}]), nn.Linear(3, 2))


def test_a_float64_model_is_told_to_set_the_input_type():
    from filterprune.errors import AnalysisError

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).double()
    config = {"input_info": {"sample_size": [1, 3, 16, 16]},
              "compression": [{"algorithm": "filter_pruning"}]}
    with pytest.raises(AnalysisError, match=r"set `input_info.type` to 'float64'"):
        create_compressed_model(model, config)
    config["input_info"]["type"] = "float64"
    create_compressed_model(model, config)


class _KeywordOnly(nn.Module):
    def forward(self, *, image):
        return image


def test_a_keyword_only_argument_is_refused_with_what_to_do():
    """It was refused as if forward had no such argument ("forward()")."""
    with pytest.raises(ConfigError, match=r"keyword='image', a keyword-only argument \(after "
                       r"`\*`\); remove the `\*`"):  # fmt: skip
        sample_inputs(_config([{"sample_size": [1, 3], "keyword": "image"}]), _KeywordOnly())


class _BatchForward(nn.Module):
    """``forward(self, batch)`` reading a dict of tensors, or one tensor where said."""

    def __init__(self, annotated=False):
        super().__init__()
        self.conv, self.head, self.annotated = nn.Conv2d(3, 8, 3), nn.Linear(8, 2), annotated

    def forward(self, batch):
        x = batch[:, :, 0] if self.annotated else batch["image"]
        return self.head(self.conv(x).mean((2, 3)))


def _tensor_forward(self, batch: torch.Tensor):
    return _BatchForward.forward(self, batch)


@pytest.mark.parametrize("annotated", [False, True])
def test_a_forward_taking_a_container_is_told_to_wrap(annotated):
    """It failed with torch's "too many indices for tensor of dimension 4" alone."""
    from filterprune.errors import AnalysisError

    model = _BatchForward(annotated)
    if annotated:  # said to take a tensor: no word of containers
        model.forward = _tensor_forward.__get__(model)
    config = {"input_info": {"sample_size": [1, 3, 16, 16]},
              "compression": [{"algorithm": "filter_pruning"}]}
    with pytest.raises(AnalysisError) as info:
        create_compressed_model(model, config)
    wrap = "if `forward(batch)` takes a dict or tuple of tensors, prune a wrapper"
    assert (wrap in str(info.value)) != annotated
