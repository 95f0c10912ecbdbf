"""Config parsing, validation messages and resolved parameters (no framework imports)."""

import copy
import json
import subprocess
import sys

import jsonschema
import pytest
from core_fixtures import registries  # noqa: F401 - fixture

from filterprune.core.config import (
    Config,
    FilterPruningParams,
    LegrParams,
    QuantizationParams,
    QuantizerParams,
)
from filterprune.core.importance import list_importances
from filterprune.core.schedule import list_schedules
from filterprune.core.schema import (
    CONFIG_SCHEMA,
    FILTER_IMPORTANCES,
    FILTER_PRUNING_SCHEMA,
    SCHEDULES,
    algorithm_schema,
)
from filterprune.errors import ConfigError

BASE = {"input_info": {"sample_size": [1, 3, 32, 32]}}


def with_pruning(params=None, **algo):
    entry = {"algorithm": "filter_pruning", **algo}
    if params is not None:
        entry["params"] = params
    return {**BASE, "compression": [entry]}


# --- valid configs -----------------------------------------------------------------


def test_reference_workflow_config_is_accepted():
    config = Config.from_dict({
        "input_info": {"sample_size": [1, 3, 224, 224]},
        "compression": [
            {"algorithm": "filter_pruning", "pruning_init": 0.1,
             "params": {"pruning_target": 0.4, "pruning_steps": 15}},
            {"algorithm": "quantization"},
        ],
    })
    assert isinstance(config, dict)
    assert [a["algorithm"] for a in config.algorithms()] == ["filter_pruning", "quantization"]
    assert config.get_algorithm("quantization") == {"algorithm": "quantization"}
    assert config.get_algorithm("sparsity") is None
    assert config.sample_sizes() == [[1, 3, 224, 224]]


def test_every_documented_key_is_accepted():
    Config.from_dict({
        "input_info": [{"sample_size": [1, 3, 8, 8], "type": "float", "filler": "random",
                        "keyword": "x"}, {"sample_size": [1, 4]}],
        "target_device": "CPU",
        "log_dir": "logs",
        "ignored_scopes": "{re}.*fc",
        "target_scopes": ["layer1", "layer2"],
        "compression": [{
            "algorithm": "filter_pruning",
            "pruning_init": 0.1,
            "params": {
                "schedule": "exponential_with_bias", "pruning_flops_target": 0.3,
                "num_init_steps": 1, "pruning_steps": 10, "filter_importance": "geometric_median",
                "interlayer_ranking_type": "learned_ranking", "all_weights": True,
                "prune_first_conv": True, "prune_downsample_convs": True,
                "prune_batch_norms": False, "prune_linear": False,
                "legr_params": {"generations": 10, "train_steps": 5, "max_pruning": 0.7,
                                "random_seed": 1, "population_size": 8, "num_samples": 4,
                                "mutate_percent": 0.2, "scale_sigma": 0.5},
                "save_ranking_coeffs_path": "a.json", "load_ranking_coeffs_path": "b.json",
            },
            "ignored_scopes": ["conv1"],
            "target_scopes": "{re}layer.*",
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 64}},
        }, {
            "algorithm": "quantization",
            "initializer": {"range": {"num_init_samples": 32, "type": "percentile",
                                      "params": {"min_percentile": 1, "max_percentile": 99}}},
            "weights": {"mode": "symmetric", "bits": 8, "per_channel": True},
            "activations": {"mode": "asymmetric", "bits": 4, "per_channel": False},
            "ignored_scopes": ["fc"],
            "export_to_onnx_standard_ops": True,
        }],
    })


def test_compression_may_be_a_single_dict():
    config = Config.from_dict({**BASE, "compression": {"algorithm": "filter_pruning"}})
    assert [a["algorithm"] for a in config.algorithms()] == ["filter_pruning"]


def test_from_dict_copies_and_keeps_input_untouched():
    source = with_pruning({"pruning_target": 0.3})
    config = Config.from_dict(source)
    config["compression"][0]["params"]["pruning_target"] = 0.9
    assert source["compression"][0]["params"]["pruning_target"] == 0.3


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(CONFIG_SCHEMA)
    assert algorithm_schema("filter_pruning") == FILTER_PRUNING_SCHEMA
    with pytest.raises(KeyError, match="Known algorithms: 'filter_pruning', 'quantization', "
                       "'knowledge_distillation'"):
        algorithm_schema("magnitude_sparsity")


def test_schema_enums_equal_registries():
    params = algorithm_schema("filter_pruning")["properties"]["params"]["properties"]
    assert params["schedule"]["enum"] == list_schedules()
    assert params["filter_importance"]["enum"] == list_importances()
    assert list(SCHEDULES) == list_schedules()
    assert list(FILTER_IMPORTANCES) == list_importances()


def test_schema_defaults_match_dataclass_defaults():
    params = FILTER_PRUNING_SCHEMA["properties"]["params"]["properties"]
    defaults = FilterPruningParams()
    for key, schema in params.items():
        if "default" in schema:
            assert getattr(defaults, key) == schema["default"], key
    legr = params["legr_params"]["properties"]
    for key, schema in legr.items():
        assert getattr(LegrParams(), key) == schema["default"], key


# --- error messages ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (with_pruning({"pruning_targt": 0.3}),
         r"^Unknown key `compression\[0\]\.params\.pruning_targt`\. Allowed keys: all_weights, "
         r".*pruning_target.*\. Did you mean `pruning_target`\?$"),
        (with_pruning({"pruning_target": 1.5}),
         r"^`compression\[0\]\.params\.pruning_target` must be a number in \[0, 1\)\. "
         r"Received: pruning_target=1\.5\.$"),
        (with_pruning({"pruning_target": "0.5"}),
         r"must be a number in \[0, 1\)\. Received: pruning_target='0\.5'\.$"),
        (with_pruning({"pruning_flops_target": -0.1}),
         r"`compression\[0\]\.params\.pruning_flops_target` must be a number in \[0, 1\)"),
        (with_pruning(pruning_init=1.0),
         r"`compression\[0\]\.pruning_init` must be a number in \[0, 1\)\. "
         r"Received: pruning_init=1\.0\."),
        (with_pruning({"schedule": "exponental"}),
         r"`compression\[0\]\.params\.schedule` must be one of 'exponential', "
         r"'exponential_with_bias', 'baseline'\. Received: schedule='exponental'\. "
         r"Did you mean `exponential`\?"),
        (with_pruning({"filter_importance": "L3"}),
         r"`compression\[0\]\.params\.filter_importance` must be one of 'L1', 'L2', "
         r"'geometric_median', 'taylor', 'bn_scale', 'coupled_L2'\. "
         r"Received: filter_importance='L3'\."),
        (with_pruning({"interlayer_ranking_type": "legr"}),
         r"must be one of 'unweighted_ranking', 'learned_ranking'"),
        (with_pruning({"pruning_steps": 0}),
         r"`compression\[0\]\.params\.pruning_steps` must be an integer >= 1\. "
         r"Received: pruning_steps=0\."),
        (with_pruning({"num_init_steps": 1.5}),
         r"`compression\[0\]\.params\.num_init_steps` must be an integer >= 0\."),
        (with_pruning({"all_weights": "yes"}),
         r"`compression\[0\]\.params\.all_weights` must be a boolean \(true or false\)\. "
         r"Received: all_weights='yes'\."),
        (with_pruning({"legr_params": {"generation": 3}}),
         r"Unknown key `compression\[0\]\.params\.legr_params\.generation`\..*"
         r"Did you mean `generations`\?"),
        (with_pruning({"pruning_target": float("nan")}),
         r"`compression\[0\]\.params\.pruning_target` must be a finite number\. "
         r"Received: pruning_target=nan\."),
        (with_pruning(initializer={"batchnorm_adaptation": {"num_bn_adaptation_samples": -1}}),
         r"num_bn_adaptation_samples` must be an integer >= 0\."),
        (with_pruning(ignored_scopes=5),
         r"`compression\[0\]\.ignored_scopes` must be a string or a list of strings\. "
         r"Received: ignored_scopes=5\."),
        ({**BASE, "compression": [{"algorithm": "filter_prune"}]},
         r"`compression\[0\]\.algorithm` must be one of 'filter_pruning', 'quantization', "
         r"'knowledge_distillation'\. "
         r"Received: algorithm='filter_prune'\. Did you mean `filter_pruning`\?"),
        ({**BASE, "compression": [{"params": {}}]},
         r"`compression\[0\]\.algorithm` must be set to one of .*Received: no `algorithm` key\."),
        ({**BASE, "compression": 3},
         r"`compression` must be an object or a non-empty list of objects\. "
         r"Received: compression=3\."),
        ({"compression": {"algorithm": "filter_pruning"}},
         r"`input_info` must be set to .*Received: no `input_info` key\."),
        ({"input_info": {"sample_size": [1, "3"]}},
         r"`input_info\.sample_size\[1\]` must be an integer >= 1\. "
         r"Received: sample_size\[1\]='3'"),
        ({"input_info": {"shape": [1, 3]}}, r"Unknown key `input_info\.shape`"),
        ({**BASE, "target_device": "TPU"}, r"`target_device` must be one of 'ANY', "),
        ({**BASE, "compression": [{"algorithm": "quantization", "weights": {"bits": 16}}]},
         r"`compression\[0\]\.weights\.bits` must be an integer in \[2, 8\]\. Received: bits=16\."),
        ({**BASE, "compression": [{"algorithm": "quantization",
                                   "initializer": {"range": {"type": "max"}}}]},
         r"`compression\[0\]\.initializer\.range\.type` must be one of 'min_max', "
         r"'mean_min_max', 'percentile', 'mean_percentile'\."),
        ({**BASE, "compression": [{"algorithm": "quantization", "pruning_init": 0.1}]},
         r"Unknown key `compression\[0\]\.pruning_init`"),
        (with_pruning({"zero_grad": True}),
         r"Unknown key `compression\[0\]\.params\.zero_grad`\..* always get zero gradients"),
        ({**BASE, "compression": [{"algorithm": "quantization", "scope_overrides": {}}]},
         r"Unknown key `compression\[0\]\.scope_overrides`\..* leave layers in float with"),
        ({**BASE, "compression": [{"algorithm": "quantization",
                                   "activations": {"signedness_to_force": True}}]},
         r"Unknown key `compression\[0\]\.activations\.signedness_to_force`\..* It is "
         r"`signed` here"),
        ({**BASE, "compression": [{"algorithm": "quantization",
                                   "initializer": {"range": [{"type": "min_max"}]}}]},
         r"`compression\[0\]\.initializer\.range` must be an object\..* Per-scope ranges .* "
         r"give one object"),
    ],
)
def test_invalid_config_messages(config, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(config)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        Config.from_dict(with_pruning({"pruning_target": 2}))


def test_both_targets_is_an_error_naming_both():
    with pytest.raises(
        ConfigError,
        match=r"^`compression\[0\]\.params\.pruning_target` and "
        r"`compression\[0\]\.params\.pruning_flops_target` must not both be set; choose one\. "
        r"Received: pruning_target=0\.5, pruning_flops_target=0\.3\.$",
    ):
        Config.from_dict(with_pruning({"pruning_target": 0.5, "pruning_flops_target": 0.3}))


def test_invalid_regex_in_scope_is_named():
    with pytest.raises(
        ConfigError,
        match=r"`compression\[0\]\.ignored_scopes\[1\]` must be a valid regular expression "
        r"after `\{re\}`\. Received: ignored_scopes\[1\]='\{re\}layer1\.\('",
    ):
        Config.from_dict(with_pruning(ignored_scopes=["conv1", "{re}layer1.("]))
    with pytest.raises(ConfigError, match=r"^`target_scopes` must be a valid regular expression"):
        Config.from_dict({**BASE, "target_scopes": "{re}[a"})


def test_duplicate_algorithm_is_an_error():
    config = {**BASE, "compression": [{"algorithm": "filter_pruning"},
                                      {"algorithm": "quantization"},
                                      {"algorithm": "filter_pruning"}]}
    with pytest.raises(ConfigError, match=r"algorithm='filter_pruning' at compression\[0\] and "
                       r"compression\[2\]"):
        Config.from_dict(config)


def test_infeasible_exponential_with_bias_is_rejected_at_creation():
    config = with_pruning({"schedule": "exponential_with_bias", "pruning_target": 0.5},
                          pruning_init=0.4)
    with pytest.raises(ConfigError, match=r"^`compression\[0\]\.pruning_init` must be below 5/7 "
                       r"of `compression\[0\]\.params\.pruning_target` for schedule "
                       r"'exponential_with_bias'\. Received: pruning_init=0\.4, "
                       r"pruning_target=0\.5\.$"):
        Config.from_dict(config)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match=r"`config` must be an object \(dict\)\. Received"):
        Config.from_dict([1, 2])


# --- JSON files --------------------------------------------------------------------


def test_from_json_reads_comments_and_trailing_commas(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(
        '{\n  // NNCF configs may carry comments\n  "input_info": {"sample_size": [1, 3, 8, 8],},\n'
        '  "log_dir": "a//b/*c*/", /* block */\n'
        '  "compression": {"algorithm": "filter_pruning"},\n}\n'
    )
    config = Config.from_json(path)
    assert config["log_dir"] == "a//b/*c*/"
    assert config.sample_sizes() == [[1, 3, 8, 8]]


def test_from_json_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"`path` \(the CLI's --config\) must name an existing "
                       r"JSON file\. Received: path='.*nope\.json'\."):
        Config.from_json(missing)


def test_from_json_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "input_info": {"sample_size": [1, 3 8]}\n}\n')
    with pytest.raises(ConfigError, match=r"Config file '.*bad\.json' is not valid JSON: "
                       r"Expecting ',' delimiter at line 2, column 39\."):
        Config.from_json(path)


def test_from_json_refuses_a_key_given_twice(tmp_path):
    """The second ``input_info`` won silently."""
    path = tmp_path / "twice.json"
    path.write_text('{"input_info": {"sample_size": [1, 3, 8, 8]},\n'
                    ' "input_info": {"sample_size": [1, 3, 16, 16]}}')  # fmt: skip
    with pytest.raises(ConfigError, match=r"'.*twice\.json' has the key `input_info` twice"):
        Config.from_json(path)


def test_from_json_validation_error_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(with_pruning({"pruning_target": 3})))
    with pytest.raises(ConfigError, match=r"pruning_target=3\. \(in config file '.*c\.json'\)"):
        Config.from_json(str(path))


# --- runtime attachments -----------------------------------------------------------


class _LoaderStruct:
    def __init__(self, loader):
        self.loader = loader


class _OtherStruct:
    pass


def test_extra_structs_and_init_args():
    config = Config.from_dict(BASE)
    loader = object()
    config.register_extra_structs([_LoaderStruct(loader)])
    assert config.has_extra_struct(_LoaderStruct)
    assert config.get_extra_struct(_LoaderStruct).loader is loader
    assert not config.has_extra_struct(_OtherStruct)
    with pytest.raises(ConfigError, match=r"No `_OtherStruct` is registered in the config "
                       r"\(registered: _LoaderStruct\)"):
        config.get_extra_struct(_OtherStruct)
    with pytest.raises(ConfigError, match="registered once per type"):
        config.register_extra_structs([_LoaderStruct(None)])
    config.init_args["data_loader"] = loader
    assert "data_loader" not in config  # attribute, not dict content
    clone = copy.deepcopy(config)
    assert clone == config and clone is not config
    assert clone.init_args["data_loader"] is loader  # shared, not copied
    assert clone.get_extra_struct(_LoaderStruct).loader is loader


# --- resolved parameters -----------------------------------------------------------


def test_filter_pruning_defaults():
    params = FilterPruningParams.from_config(Config.from_dict(with_pruning()))
    assert params == FilterPruningParams()
    assert params.pruning_init == 0.0
    assert params.schedule == "exponential"
    assert params.pruning_target == 0.5
    assert params.pruning_flops_target is None
    assert (params.num_init_steps, params.pruning_steps) == (0, 100)
    assert params.filter_importance == "L2"
    assert params.interlayer_ranking_type == "unweighted_ranking"
    assert not params.all_weights and not params.prune_first_conv
    assert not params.prune_downsample_convs
    assert params.prune_batch_norms and params.prune_linear
    assert params.legr == LegrParams(generations=400, train_steps=200, max_pruning=0.8,
                                     random_seed=42, population_size=64, num_samples=16,
                                     mutate_percent=0.1, scale_sigma=1.0)
    assert params.save_ranking_coeffs_path is None and params.load_ranking_coeffs_path is None
    assert params.ignored_scopes == () and params.target_scopes == ()
    assert params.num_bn_adaptation_samples == 2000
    assert not params.prune_flops and params.target_level == 0.5


def test_filter_pruning_values_and_scope_merge():
    config = {
        **BASE,
        "ignored_scopes": "fc",
        "target_scopes": ["layer1"],
        "compression": [{
            "algorithm": "filter_pruning", "pruning_init": 0,
            "params": {"pruning_flops_target": 0.3, "num_init_steps": 2.0,
                       "legr_params": {"generations": 7}},
            "ignored_scopes": ["conv1", "fc"], "target_scopes": "layer2",
            "initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 10}},
        }],
    }
    params = FilterPruningParams.from_config(config)  # a plain dict is validated first
    assert params.pruning_target is None and params.pruning_flops_target == 0.3
    assert params.prune_flops and params.target_level == 0.3
    assert params.num_init_steps == 2 and isinstance(params.num_init_steps, int)
    assert params.pruning_init == 0.0 and isinstance(params.pruning_init, float)
    assert params.legr.generations == 7 and params.legr.train_steps == 200
    assert params.ignored_scopes == ("fc", "conv1")
    assert params.target_scopes == ("layer1", "layer2")
    assert params.num_bn_adaptation_samples == 10


def test_filter_pruning_round_trip_and_to_dict():
    params = FilterPruningParams(pruning_flops_target=0.25, schedule="baseline",
                                 ignored_scopes=("a",), prune_linear=False)
    again = FilterPruningParams.from_config({**BASE, "compression": params.to_algorithm_dict()})
    assert again == params
    flat = params.to_dict()
    assert flat["ignored_scopes"] == ["a"] and flat["legr"]["generations"] == 400
    json.dumps(flat)


def test_filter_pruning_missing_algorithm():
    config = {**BASE, "compression": {"algorithm": "quantization"}}
    with pytest.raises(ConfigError, match=r"`compression` must contain an algorithm "
                       r"'filter_pruning'\. Received: algorithms=\['quantization'\]\."):
        FilterPruningParams.from_config(config)


def test_filter_pruning_params_validate_on_construction():
    with pytest.raises(ConfigError, match=r"`params\.pruning_target` and "
                       r"`params\.pruning_flops_target` must not both be set"):
        FilterPruningParams(pruning_target=0.5, pruning_flops_target=0.2)
    with pytest.raises(ConfigError, match=r"`params\.pruning_steps` must be an integer >= 1"):
        FilterPruningParams(pruning_steps=0)
    with pytest.raises(ConfigError, match=r"^`pruning_init` must be below 5/7 of "
                       r"`params\.pruning_target` for schedule 'exponential_with_bias'\. "
                       r"Received: pruning_init=0\.4, pruning_target=0\.5\.$"):
        FilterPruningParams(schedule="exponential_with_bias", pruning_init=0.4)
    with pytest.raises(ConfigError, match=r"`legr\.max_pruning` must be a number in \[0, 1\)"):
        LegrParams(max_pruning=1.0)


def test_quantization_defaults_and_values():
    default = QuantizationParams.from_config({**BASE, "compression": {"algorithm": "quantization"}})
    assert default == QuantizationParams()
    assert default.weights == QuantizerParams(mode="symmetric", bits=8, per_channel=True)
    assert default.activations == QuantizerParams(mode="symmetric", bits=8, per_channel=False)
    assert (default.num_init_samples, default.range_type) == (256, "mean_min_max")
    config = {
        **BASE,
        "ignored_scopes": ["head"],
        "compression": {"algorithm": "quantization",
                        "activations": {"mode": "asymmetric", "ignored_scopes": "stem"},
                        "initializer": {"range": {"num_init_samples": 8, "type": "min_max"}}},
    }
    params = QuantizationParams.from_config(config)
    assert params.activations.mode == "asymmetric"
    assert params.activations.ignored_scopes == ("head", "stem")
    assert params.weights.ignored_scopes == ("head",)
    assert (params.num_init_samples, params.range_type) == (8, "min_max")
    again = QuantizationParams.from_config({**BASE, "compression": params.to_algorithm_dict()})
    assert again == params
    json.dumps(params.to_dict())
    with pytest.raises(ConfigError, match=r"`bits` must be an integer in \[2, 8\]"):
        QuantizerParams(bits=1)


def test_core_imports_no_framework():
    code = (
        "import sys\n"
        "import filterprune.core.config, filterprune.core.schedule, filterprune.core.scopes\n"
        "import filterprune.core.importance, filterprune.core.schema\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(', '.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_keeps_training_script_settings():
    config = Config.from_dict({**BASE, "model": "resnet50", "batch_size": 256, "epochs": 90})
    assert config["model"] == "resnet50"


@pytest.mark.parametrize(("section", "message"), [
    ({"mode": "adaptive_compression_levle"}, r"`accuracy_aware_training.mode` must be one of"),
    ({"mode": "adaptive_compression_level", "params": {"patience_epoch": 3}},
     r"Unknown key `accuracy_aware_training.params.patience_epoch`"),
    ({"mode": "adaptive_compression_level",  # a percent: over 100 no drop is too large
      "params": {"maximal_relative_accuracy_degradation": 150}},
     r"`accuracy_aware_training.params.maximal_relative_accuracy_degradation` must be"),
])  # fmt: skip
def test_the_accuracy_aware_section_is_checked_with_the_rest(section, message):
    """A misspelt key or mode passed from_dict and create_compressed_model and was only
    refused when the loop was made, after the model was prepared."""
    config = {"input_info": {"sample_size": [1, 3, 8, 8]},
              "compression": {"algorithm": "filter_pruning"}, "accuracy_aware_training": section}
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(config)
