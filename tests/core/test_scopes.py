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
