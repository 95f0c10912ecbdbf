"""Settings declared once: schema from the dataclasses, one validation path, one message per rule,
and the complete quantization settings."""

import ast
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import filterprune.core.params as params_module
from filterprune.core.config import (
    Config,
    FilterPruningParams,
    LegrParams,
    QuantizationParams,
    QuantizerParams,
)
from filterprune.core.params import ALGORITHMS, entry_schema
from filterprune.core.schedule import ExponentialWithBiasSchedule, Scheduler
from filterprune.core.schema import algorithm_schema
from filterprune.errors import ConfigError

BASE = {"input_info": {"sample_size": [1, 3, 32, 32]}}
CORE = Path(params_module.__file__).parent


def with_algorithm(**entry):
    return {**BASE, "compression": [entry]}


def quantization(**entry):
    config = Config.from_dict(with_algorithm(algorithm="quantization", **entry))
    return QuantizationParams.from_config(config)


def imported_modules(path):
    """Every module a file imports, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


# --- one declaration ---------------------------------------------------------------


def test_params_import_neither_config_nor_schema():
    assert {".config", ".schema", "."} & imported_modules(CORE / "params.py") == set()
    assert ".params" in imported_modules(CORE / "config.py")
    assert ".params" in imported_modules(CORE / "schema.py")
    assert ".config" not in imported_modules(CORE / "schema.py")


def _leaves(schema, path=()):
    """Key paths of the leaves of an object schema."""
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from _leaves(sub, (*path, key))
        else:
            yield (*path, key)


def _field_paths(cls, prefix=()):
    for f in dataclasses.fields(cls):
        path = (*prefix, *f.metadata["path"])
        if "schema" in f.metadata:
            yield path
        else:
            yield from _field_paths(type(f.default_factory()), path)


# Keys accepted for NNCF compatibility that no settings class reads.
COMPAT = {("algorithm",), ("initializer", "batchnorm_adaptation", "num_bn_forget_samples")}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_schema_keys_are_the_dataclass_fields(name):
    cls = ALGORITHMS[name]
    leaves = {p for p in _leaves(algorithm_schema(name)) if p[:2] != ("initializer", "precision")}
    # NNCF shares one initializer schema: every entry accepts every algorithm's keys there.
    shared = {p for other in ALGORITHMS.values() for p in _field_paths(other)
              if p[0] == "initializer"}  # fmt: skip
    assert leaves - COMPAT == set(_field_paths(cls)) | shared


def test_group_schema_defaults_follow_the_group():
    props = algorithm_schema("quantization")["properties"]
    assert props["weights"]["properties"]["per_channel"]["default"] is True
    assert props["activations"]["properties"]["per_channel"]["default"] is False
    assert props["preset"] == {"type": "string", "enum": ["performance", "mixed"],
                               "default": "performance"}  # fmt: skip
    assert "default" not in props["weights"]["properties"]["signed"]


# --- one validation path -----------------------------------------------------------


def test_validated_config_is_read_without_checking_again(monkeypatch):
    config = Config.from_dict(with_algorithm(algorithm="filter_pruning",
                                             params={"pruning_target": 0.3}))  # fmt: skip
    assert config.validated

    def fail(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(params_module, "validate", fail)
    monkeypatch.setattr(FilterPruningParams, "check", fail)
    assert FilterPruningParams.from_config(config).pruning_target == 0.3
    with pytest.raises(AssertionError, match="validated again"):  # a plain dict is checked
        FilterPruningParams.from_config(dict(config))
    with pytest.raises(AssertionError, match="validated again"):  # so is code
        FilterPruningParams(pruning_target=0.3)


def test_plain_dict_and_unvalidated_config_are_checked():
    bad = with_algorithm(algorithm="filter_pruning", params={"pruning_steps": 0})
    message = r"^`compression\[0\]\.params\.pruning_steps` must be an integer >= 1\."
    with pytest.raises(ConfigError, match=message):
        FilterPruningParams.from_config(bad)
    assert not Config(bad).validated
    with pytest.raises(ConfigError, match=message):
        FilterPruningParams.from_config(Config(bad))
    with pytest.raises(ConfigError, match=r"^Unknown key `compression\.params\.pruning_targt`"):
        FilterPruningParams.from_config({**BASE, "compression": {
            "algorithm": "filter_pruning", "params": {"pruning_targt": 0.3}}})
    with pytest.raises(ConfigError, match=r"^`ignored_scopes` must be a valid regular expression"):
        FilterPruningParams.from_config({**with_algorithm(algorithm="filter_pruning"),
                                         "ignored_scopes": "{re}("})  # fmt: skip


def test_code_and_config_give_the_same_message_for_a_value():
    with pytest.raises(ConfigError, match=r"^`params\.filters_multiple_of` must be an integer "
                       r"in \[1, 512\]\. Received: filters_multiple_of=0\.$"):
        FilterPruningParams(filters_multiple_of=0)
    with pytest.raises(ConfigError, match=r"^`compression\[0\]\.params\.filters_multiple_of` must "
                       r"be an integer in \[1, 512\]\. Received: filters_multiple_of=0\.$"):
        Config.from_dict(with_algorithm(algorithm="filter_pruning",
                                        params={"filters_multiple_of": 0}))  # fmt: skip


def test_nested_settings_must_be_their_class():
    with pytest.raises(ConfigError, match=r"^`legr` must be a LegrParams\. "
                       r"Received: legr=\{'generations': 3\}\.$"):
        FilterPruningParams(legr={"generations": 3})
    assert FilterPruningParams(legr=LegrParams(generations=3)).legr.generations == 3


def test_mutating_and_revalidating_a_config():
    config = Config.from_dict(with_algorithm(algorithm="filter_pruning"))
    config["compression"][0]["params"] = {"pruning_target": 2}
    with pytest.raises(ConfigError, match="pruning_target=2"):
        config.validate()
    assert not config.validated


# --- one message per rule ----------------------------------------------------------


def test_exponential_with_bias_rule_names_the_key_it_came_from():
    entry = {"algorithm": "filter_pruning", "pruning_init": 0.4,
             "params": {"schedule": "exponential_with_bias", "pruning_flops_target": 0.5}}
    tail = (r" for schedule 'exponential_with_bias'\. "
            r"Received: pruning_init=0\.4, pruning_flops_target=0\.5\.$")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`compression\.pruning_init` must be below 5/7 of "
                       r"`compression\.params\.pruning_flops_target`" + tail):
        Config.from_dict({**BASE, "compression": entry})
    with pytest.raises(ConfigError, match=r"^`pruning_init` must be below 5/7 of "
                       r"`params\.pruning_flops_target`" + tail):
        FilterPruningParams(schedule="exponential_with_bias", pruning_init=0.4,
                            pruning_flops_target=0.5)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^`pruning_init` must be below 5/7 of "
                       r"`pruning_target` for schedule"):
        ExponentialWithBiasSchedule(0.4, 0.5, 10)


def test_both_targets_one_message_from_code_and_config():
    message = ("`{0}params.pruning_target` and `{0}params.pruning_flops_target` must not both "
               "be set; choose one. Received: pruning_target=0.5, pruning_flops_target=0.2.")
    with pytest.raises(ConfigError) as from_code:
        FilterPruningParams(pruning_target=0.5, pruning_flops_target=0.2)
    assert str(from_code.value) == message.format("")
    with pytest.raises(ConfigError) as from_config:
        Config.from_dict(with_algorithm(algorithm="filter_pruning", params={
            "pruning_target": 0.5, "pruning_flops_target": 0.2}))
    assert str(from_config.value) == message.format("compression[0].")


# --- the scheduler's target --------------------------------------------------------


def test_scheduler_takes_the_target_from_the_params():
    levels = []
    assert Scheduler(FilterPruningParams(), levels.append, list).target_level == 0.5
    plain = SimpleNamespace(schedule="baseline", pruning_init=0.0, target_level=0.3,
                            prune_flops=True, num_init_steps=0, pruning_steps=1)
    scheduler = Scheduler(plain, levels.append, lambda: None)
    scheduler.epoch_step()
    assert scheduler.prune_flops and levels == [0.3]


# --- quantization ------------------------------------------------------------------


def test_quantization_defaults():
    params = quantization()
    assert params.preset == "performance"
    assert params.weights == QuantizerParams(mode="symmetric", bits=8, per_channel=True)
    assert params.activations == QuantizerParams(mode="symmetric", bits=8, per_channel=False)
    assert params.weights.signed is None and params.activations.signed is None
    assert (params.num_init_samples, params.range_type) == (256, "mean_min_max")
    assert (params.min_percentile, params.max_percentile) == (0.1, 99.9)
    assert params.num_bn_adaptation_samples == 2000
    assert params.export_to_onnx_standard_ops is False
    assert params == QuantizationParams()


def test_mixed_preset_makes_activations_asymmetric_unless_given():
    mixed = quantization(preset="mixed")
    assert (mixed.weights.mode, mixed.activations.mode) == ("symmetric", "asymmetric")
    assert QuantizationParams(preset="mixed") == mixed
    given = quantization(preset="mixed", activations={"mode": "symmetric"})
    assert given.activations.mode == "symmetric"
    assert QuantizationParams(
        preset="mixed", activations=QuantizerParams(bits=4)
    ).activations == QuantizerParams(mode="asymmetric", bits=4)  # fmt: skip


def test_every_quantization_key_is_read():
    params = quantization(
        preset="mixed",
        weights={"bits": 4, "mode": "asymmetric", "per_channel": False, "signed": True,
                 "target_scopes": ["{re}conv.*"]},
        activations={"bits": 6, "per_channel": True, "signed": False, "ignored_scopes": "fc"},
        initializer={"range": {"num_init_samples": 16, "type": "percentile",
                               "params": {"min_percentile": 1, "max_percentile": 99}},
                     "batchnorm_adaptation": {"num_bn_adaptation_samples": 32}},
        ignored_scopes=["head"],
        export_to_onnx_standard_ops=True,
    )  # fmt: skip
    assert params.weights == QuantizerParams(mode="asymmetric", bits=4, per_channel=False,
                                             signed=True, ignored_scopes=("head",),
                                             target_scopes=("{re}conv.*",))  # fmt: skip
    assert params.activations == QuantizerParams(mode="asymmetric", bits=6, per_channel=True,
                                                 signed=False, ignored_scopes=("head", "fc"))
    assert (params.range_type, params.num_init_samples) == ("percentile", 16)
    assert (params.min_percentile, params.max_percentile) == (1.0, 99.0)
    assert params.num_bn_adaptation_samples == 32 and params.export_to_onnx_standard_ops
    again = QuantizationParams.from_config({**BASE, "compression": params.to_algorithm_dict()})
    assert again == params
    flat = json.loads(json.dumps(params.to_dict()))
    assert flat["weights"]["signed"] is True and flat["preset"] == "mixed"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"preset": "mix"}, r"^`compression\[0\]\.preset` must be one of 'performance', 'mixed'\. "
                            r"Received: preset='mix'\. Did you mean `mixed`\?$"),
        ({"activations": {"signed": "yes"}},
         r"^`compression\[0\]\.activations\.signed` must be a boolean \(true or false\)\."),
        ({"weights": {"mode": "symetric"}}, r"Did you mean `symmetric`\?$"),
        ({"initializer": {"range": {"params": {"min_percentile": 60, "max_percentile": 40}}}},
         r"^`compression\[0\]\.initializer\.range\.params\.min_percentile` must be below "
         r"`compression\[0\]\.initializer\.range\.params\.max_percentile`\. "
         r"Received: min_percentile=60\.0, max_percentile=40\.0\.$"),
    ],
)
def test_invalid_quantization_settings(entry, message):
    with pytest.raises(ConfigError, match=message):
        quantization(**entry)


def test_quantization_settings_built_in_code_are_checked():
    with pytest.raises(ConfigError, match=r"^`preset` must be one of 'performance', 'mixed'"):
        QuantizationParams(preset="fast")
    with pytest.raises(ConfigError, match=r"^`signed` must be a boolean"):
        QuantizerParams(signed=1)
    with pytest.raises(ConfigError, match=r"^`initializer\.range\.params\.min_percentile` must "
                       r"be below `initializer\.range\.params\.max_percentile`"):
        QuantizationParams(min_percentile=50, max_percentile=50)


def test_entry_schema_is_built_from_the_class():
    assert entry_schema(QuantizationParams) == algorithm_schema("quantization")
    assert entry_schema(FilterPruningParams)["required"] == ["algorithm"]
