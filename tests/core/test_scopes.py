"""Scope matching: exact names, path-boundary prefixes, `{re}` full matches, reasons."""

import pytest

from filterprune.core.scopes import ScopeMatcher, compile_pattern, normalize_scopes
from filterprune.errors import ConfigError


def test_no_scopes_allows_everything():
    matcher = ScopeMatcher()
    assert matcher.reason("anything") is None and matcher.allows("conv1")


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("layer1", False),
        ("layer1.0.conv1", False),
        ("layer1/conv", False),  # Keras / NNCF-style separators
        ("layer10.conv1", True),  # prefix only at a boundary
        ("layer", True),
        ("xlayer1.0", True),
    ],
)
def test_prefix_on_path_boundaries(name, allowed):
    assert ScopeMatcher(ignored=["layer1"]).allows(name) is allowed


def test_regex_is_a_full_match():
    matcher = ScopeMatcher(ignored="{re}layer[12]\\.0\\..*")
    assert not matcher.allows("layer1.0.conv1")
    assert matcher.allows("layer3.0.conv1")
    assert matcher.allows("model.layer1.0.conv1")  # fullmatch: not a substring search
    assert not ScopeMatcher(ignored="{re}.*conv.*").allows("model.layer1.0.conv1")


def test_reasons():
    matcher = ScopeMatcher(ignored=["fc", "{re}layer1.*"], target=["layer1", "layer2"])
    assert matcher.reason("layer1.0.conv1") == "in ignored_scopes ('{re}layer1.*')"
    assert matcher.reason("fc") == "in ignored_scopes ('fc')"  # deny list reported first
    assert matcher.reason("conv1") == "not in target_scopes"
    assert matcher.reason("layer2.1.conv2") is None


def test_empty_target_list_means_no_restriction():
    assert ScopeMatcher(target=[]).allows("conv1")


def test_invalid_patterns():
    with pytest.raises(ConfigError, match=r"^`ignored_scopes\[1\]` must be a valid regular "
                       r"expression after `\{re\}`\. Received: ignored_scopes\[1\]='\{re\}a\('"):
        ScopeMatcher(ignored=["ok", "{re}a("])
    with pytest.raises(ConfigError, match=r"^`target_scopes\[0\]` must be a non-empty name\."):
        ScopeMatcher(target=[""])
    with pytest.raises(ConfigError, match=r"`ignored_scopes\[0\]` must be a string\. "
                       r"Received: ignored_scopes\[0\]=3\."):
        ScopeMatcher(ignored=[3])


def test_compile_pattern_and_normalize():
    assert compile_pattern("{re}a+").fullmatch("aaa")
    assert compile_pattern("layer1") is None
    assert normalize_scopes("a") == ("a",)
    assert normalize_scopes(["b", "a", "b"]) == ("b", "a")
    assert normalize_scopes(None) == ()


def test_unused_patterns():
    matcher = ScopeMatcher(ignored=["layer1", "{re}.*head.*"], target=["layer9"])
    names = ["conv1", "layer1.0.conv1", "layer2.0.conv1"]
    assert matcher.unused(names) == ["{re}.*head.*", "layer9"]


def test_repr():
    assert repr(ScopeMatcher("a", ["b"])) == "ScopeMatcher(ignored=['a'], target=['b'])"


# --- NNCF scopes and unmatched patterns (issue 13, item 4) -------------------------------

from filterprune.core.scopes import check_unmatched, nncf_scope_name  # noqa: E402

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.downsample.0", "fc"]


@pytest.mark.parametrize(
    ("scope", "name"),
    [
        ("ResNet/NNCFConv2d[conv1]/conv2d_0", "conv1"),
        ("ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/conv2d_0", "layer1.0.conv1"),
        ("ResNet/Sequential[layer1]", "layer1"),
        ("Model/NNCFLinear[fc]", "fc"),
        ("layer1.0.conv1", None),
        ("ResNet/__add___0", None),
    ],
)
def test_nncf_scopes_are_read_as_module_paths(scope, name):
    assert nncf_scope_name(scope) == name


def test_nncf_scopes_match_the_modules_they_name():
    matcher = ScopeMatcher(ignored=["ResNet/Sequential[layer1]/BasicBlock[0]/NNCFConv2d[conv1]/"
                                    "conv2d_0", "ResNet/NNCFLinear[fc]/linear_0"])
    assert [n for n in LAYERS if not matcher.allows(n)] == ["layer1.0.conv1", "fc"]
    assert matcher.reason("fc") == "in ignored_scopes ('ResNet/NNCFLinear[fc]/linear_0')"
    block = ScopeMatcher(ignored="ResNet/Sequential[layer1]")  # a prefix, like a plain name
    assert [n for n in LAYERS if not block.allows(n)] == LAYERS[1:4]


@pytest.mark.parametrize(
    ("regex", "matched"),
    [
        (r"{re}.*NNCFConv2d\[conv1\].*", ["conv1", "layer1.0.conv1"]),
        (r"{re}ResNet/Sequential\[layer1\]/.*", LAYERS[1:4]),
        (r"{re}.*Sequential\[downsample\].*", ["layer1.0.downsample.0"]),
        (r"{re}ResNet/NNCFConv2d\[conv1\]/conv2d_0", ["conv1"]),  # NNCF: model class first
        (r"{re}.*NNCFConv2d\[conv1\]/conv2d_0", ["conv1", "layer1.0.conv1"]),
        (r"{re}^ResNet/NNCFConv2d\[conv1\]/conv2d_0$", ["conv1"]),
    ],
)
def test_nncf_regexes_are_searched_in_the_module_path(regex, matched):
    assert [n for n in LAYERS if not ScopeMatcher(ignored=regex).allows(n)] == matched


BLOCKS = ["features.1.conv.0", "features.2.conv.0", "features.2.conv.2", "features.12.conv.2"]
TYPES = {"": "MobileNetV2", "features": "Sequential", "features.1": "InvertedResidual",
         "features.2": "InvertedResidual", "features.12": "InvertedResidual",
         **{f"{b}.conv": "Sequential" for b in ("features.1", "features.2", "features.12")},
         **{n: "NNCFConv2d" for n in BLOCKS}}  # fmt: skip


@pytest.mark.parametrize(
    ("regex", "matched"),
    [
        (r"{re}.*InvertedResidual\[2\].*", BLOCKS[1:3]),  # was item 2 of every block
        (r"{re}MobileNetV2/Sequential\[features\]/InvertedResidual\[12\]/.*", BLOCKS[3:]),
        (r"{re}.*NNCFConv2d\[2\]/conv2d_0", [BLOCKS[2], BLOCKS[3]]),
        (r"{re}.*Sequential\[conv\]/NNCFConv2d\[0\].*", BLOCKS[:2]),
        (r"{re}.*NNCFConv2d.*", BLOCKS),  # by class alone: it matched nothing
        (r"{re}.*NNCFConv2d.*/conv2d_0", BLOCKS),
    ],
)
def test_nncf_regexes_by_class_are_searched_in_the_scopes_with_classes(regex, matched):
    """NNCF's scopes carry each module's class: ``{re}.*InvertedResidual\[2\].*`` names
    one block, and was read as ``.*\[2\].*`` (18 of mobilenet_v2's 53 layers)."""
    assert [n for n in BLOCKS if not ScopeMatcher(ignored=regex, types=TYPES).allows(n)] \
        == matched  # fmt: skip
    check_unmatched({"ignored_scopes": [regex]}, BLOCKS, TYPES)


def test_an_nncf_scope_of_an_operation_inside_a_module_picks_no_layer(caplog):
    """``.../InvertedResidual[3]/__add___0`` names the block's residual add: it was read as
    the whole block, whose convs were then neither pruned nor quantized."""
    scope = "MobileNetV2/Sequential[features]/InvertedResidual[2]/__add___0"
    assert all(ScopeMatcher(ignored=scope, types=TYPES).allows(n) for n in BLOCKS)
    caplog.set_level("WARNING", logger="filterprune")
    said = check_unmatched({"ignored_scopes": [scope]}, BLOCKS, TYPES)
    assert said and "names the operation '__add___0' inside module 'features.2', not a " \
        "layer" in said[0] and said[0] in caplog.text  # fmt: skip
    layer_op = "MobileNetV2/Sequential[features]/InvertedResidual[2]/Sequential[conv]/" \
        "NNCFConv2d[0]/conv2d_0"  # fmt: skip
    assert not ScopeMatcher(ignored=layer_op, types=TYPES).allows(BLOCKS[1])
    # as a target it selects nothing: an error, not "it changes nothing"
    with pytest.raises(ConfigError, match=r"names the operation '__add___0' inside module "
                       r"'features.2', not a layer, so it selects none"):  # fmt: skip
        check_unmatched({"target_scopes": [scope]}, BLOCKS, TYPES)


def test_unmatched_plain_scope_is_an_error_with_close_names():
    config = {"ignored_scopes": ["fc", "layer1.0.conv3"]}
    with pytest.raises(ConfigError, match=(
        r"^`ignored_scopes\[1\]` must match a layer of the model\. Received: "
        r"ignored_scopes\[1\]='layer1\.0\.conv3', which matches none\. Close layer names: "
        r"'layer1\.0\.conv[12]', 'layer1\.0\.conv[12]'.*Set `validate_scopes` to false")):
        check_unmatched(config, LAYERS)


def test_unmatched_nncf_scope_says_how_it_was_read():
    config = {"compression": [{"algorithm": "filter_pruning",
                               "target_scopes": ["ResNet/NNCFConv2d[conv9]/conv2d_0"]}]}
    with pytest.raises(ConfigError, match=(
        r"^`compression\[0\]\.target_scopes\[0\]` must match a layer .* \(read as layer "
        r"'conv9'\), which matches none\. Close layer names: 'conv1'")):
        check_unmatched(config, LAYERS)


def test_search_style_regex_is_reported_with_the_full_match_hint():
    # `{re}downsample` would match by re.search (NNCF) but is a full match here: the silent
    # case, caught and explained
    config = {"compression": {"algorithm": "filter_pruning", "ignored_scopes": "{re}downsample"}}
    with pytest.raises(ConfigError, match=(
        r"^`compression\.ignored_scopes` must match .* As a substring search it would match 1 "
        r"layer\(s\), e\.g\. 'layer1\.0\.downsample\.0', but a `\{re\}` pattern must match the "
        r"whole name: write '\{re\}\.\*downsample\.\*'")):
        check_unmatched(config, LAYERS)


def test_nested_group_scopes_are_checked_with_their_key_path():
    config = {"compression": [{"algorithm": "quantization",
                               "weights": {"ignored_scopes": ["fc2"]}}]}
    with pytest.raises(ConfigError, match=r"^`compression\[0\]\.weights\.ignored_scopes\[0\]`"):
        check_unmatched(config, LAYERS)


def test_validate_scopes_false_turns_errors_into_warnings(caplog):
    config = {"validate_scopes": False, "ignored_scopes": ["conv9"],
              "compression": {"algorithm": "filter_pruning", "target_scopes": ["fc"]}}
    with caplog.at_level("WARNING", logger="filterprune"):
        warned = check_unmatched(config, LAYERS)
    assert len(warned) == 1 and "`ignored_scopes[0]`" in warned[0]
    assert "conv9" in caplog.text
    # an entry's own key wins for that entry's patterns
    config["compression"] = {"algorithm": "filter_pruning", "validate_scopes": True,
                             "target_scopes": ["fc9"]}
    with pytest.raises(ConfigError, match=r"`compression\.target_scopes\[0\]`"):
        check_unmatched(config, LAYERS)
    config = {"ignored_scopes": ["conv9"],
              "compression": {"algorithm": "filter_pruning", "validate_scopes": False}}
    with pytest.raises(ConfigError, match=r"`ignored_scopes\[0\]`"):  # top-level stays strict
        check_unmatched(config, LAYERS)


def test_matching_patterns_pass():
    config = {"ignored_scopes": ["layer1", "{re}.*conv2", "Model/NNCFLinear[fc]/linear_0"],
              "compression": {"algorithm": "filter_pruning", "target_scopes": "conv1"}}
    assert check_unmatched(config, LAYERS) == []
