"""LeGR (``interlayer_ranking_type: learned_ranking``) in Keras: the search runs inside
``create_compressed_model``, is driven by ``validate_fn``, is deterministic per seed and
leaves the model's variables and its optimizer's as they were."""

import copy

import numpy as np
import pytest
from keras_helpers import keras, layers, make_config, randomize_bn, tf

from filterprune.errors import ConfigError
from filterprune.tensorflow import create_compressed_model, register_default_init_args
from filterprune.tensorflow.masks import is_masked, masked_weights, weight_mask_of

LEGR = {"generations": 8, "population_size": 4, "num_samples": 2, "train_steps": 2,
        "max_pruning": 0.38}  # fmt: skip


def chain():
    """Three conv + BatchNorm blocks, then a dense head; c2 starts with weak filters."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = inp
    for name, filters in (("c1", 16), ("c2", 32), ("c3", 32)):
        x = layers.Conv2D(filters, 3, padding="same", name=name)(x)
        x = layers.ReLU()(layers.BatchNormalization(name=f"b{name[1]}")(x))
    model = keras.Model(inp, layers.Dense(4, name="fc")(layers.GlobalAveragePooling2D()(x)))
    kernel = model.get_layer("c2").kernel
    kernel.assign(kernel.numpy() * np.where(np.arange(32) < 16, 0.8, 1.0).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    return randomize_bn(model)


def data(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 4, n))).batch(4)


def kept_c2(model):
    kernel = masked_weights(model.get_layer("c2"))["kernel"]
    return int((np.abs(kernel).sum(axis=(0, 1, 2)) > 0).sum())


def validate_c2(model, dataset):
    """Rewards the c2 filters kept; runs the model in training mode on purpose, so its
    BatchNorm statistics change and the search has to put them back."""
    for x, _ in dataset.take(1):
        model(x, training=True)
    return [kept_c2(model), 0.0]


def train_steps(dataset, model, optimizer, ctrl, steps):
    model.fit(dataset.take(steps), verbose=0, shuffle=False)  # steps ``optimizer`` (compiled)


def config(ranking="learned_ranking", validate_fn=validate_c2, **params):
    params = {"pruning_flops_target": 0.38, "schedule": "baseline", "prune_first_conv": True,
              "filters_multiple_of": 2, "interlayer_ranking_type": ranking, "legr_params": LEGR,
              **params}  # fmt: skip
    extra = {"initializer": {"batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
    cfg = make_config((1, 8, 8, 1), pruning_init=params["pruning_flops_target"], extra=extra,
                      **params)  # fmt: skip
    return register_default_init_args(cfg, data(), val_dataset=data(4, seed=2),
                                      validate_fn=validate_fn, train_steps_fn=train_steps)


def values(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def test_search_is_deterministic_per_seed():
    first, _ = create_compressed_model(chain(), config())
    again, _ = create_compressed_model(chain(), config())
    other, _ = create_compressed_model(chain(), config(legr_params={**LEGR, "random_seed": 5}))
    assert again.ranking_coeffs == first.ranking_coeffs
    assert other.ranking_coeffs != first.ranking_coeffs


def test_the_reward_drives_the_ranking_and_the_flops_target_holds():
    legr, legr_model = create_compressed_model(chain(), config())
    plain, plain_model = create_compressed_model(chain(), config("unweighted_ranking"))
    assert kept_c2(legr_model) > kept_c2(plain_model)
    for ctrl in (legr, plain):
        assert 0.38 <= 1 - ctrl.statistics().flops_kept <= 0.4


def test_search_leaves_model_and_optimizer_as_they_were(tmp_path):
    model = chain()
    model.fit(data(4, seed=3), verbose=0, shuffle=False)  # momentum before the search
    before = values(model)
    slots = {v.path: np.array(v.numpy()) for v in model.optimizer.variables}
    path = tmp_path / "coeffs.json"
    ctrl, model = create_compressed_model(model, config(save_ranking_coeffs_path=str(path)))
    after = values(model)
    assert after.keys() == before.keys()
    for key, value in before.items():  # weights and BatchNorm statistics, bit for bit
        assert np.array_equal(after[key], value), key
    for variable in model.optimizer.variables:
        assert np.array_equal(variable.numpy(), slots[variable.path]), variable.path
    # the same coefficients loaded, without a search, give the same masks
    loaded, loaded_model = create_compressed_model(
        chain(), config(validate_fn=fail, load_ranking_coeffs_path=str(path)))
    assert loaded.ranking_coeffs == ctrl.ranking_coeffs
    assert loaded.plan.to_dict(loaded.analysis) == ctrl.plan.to_dict(ctrl.analysis)
    for name in ("c1", "c2", "c3", "fc"):
        mask = weight_mask_of(model.get_layer(name), "kernel")
        assert np.array_equal(mask, weight_mask_of(loaded_model.get_layer(name), "kernel"))


def fail(model, dataset):
    raise AssertionError("validate_fn must not be called")


def test_resume_restores_coefficients_without_searching():
    ctrl, _ = create_compressed_model(chain(), config())
    state = copy.deepcopy(ctrl.get_compression_state())
    resumed, _ = create_compressed_model(chain(), config(validate_fn=fail), state)
    assert resumed.ranking_coeffs == ctrl.ranking_coeffs
    assert resumed.plan.to_dict(resumed.analysis) == ctrl.plan.to_dict(ctrl.analysis)


def test_missing_validate_fn_is_a_clear_error():
    model = chain()
    cfg = register_default_init_args(
        make_config((1, 8, 8, 1), interlayer_ranking_type="learned_ranking"), data())
    with pytest.raises(ConfigError, match=r"^`validate_fn` and `val_dataset` must be registered "
                       r".*LeGR.*register_default_init_args\(config, dataset, val_dataset=\.\.\., "
                       r"validate_fn=\.\.\.\).*Received: validate_fn=None, val_dataset=None\.$"):
        create_compressed_model(model, cfg)
    assert not any(is_masked(layer) for layer in model.layers)
