"""Keras: ``coupled_L2`` scores a channel by its filters, its BatchNorm and its readers'
columns, read in Keras' own layouts."""

import numpy as np
from keras_helpers import conv_bn_net, keras, make_config

from filterprune.tensorflow import create_compressed_model


def test_scores_are_the_mean_over_every_tensor_of_the_channel():
    keras.utils.set_random_seed(0)
    model = conv_bn_net()
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.gamma.assign(rng.uniform(0.5, 1.5, 16).astype("float32"))
    bn.beta.assign(rng.normal(0, 0.1, 16).astype("float32"))
    config = make_config((1, 16, 16, 3), filter_importance="coupled_L2", schedule="baseline",
                         pruning_init=0.0, filters_multiple_of=1)  # fmt: skip
    ctrl, _ = create_compressed_model(model, config)
    mid, head = model.get_layer("mid").kernel.numpy(), model.get_layer("head").kernel.numpy()
    members = [np.square(mid).sum(axis=(0, 1, 2)), bn.gamma.numpy() ** 2, bn.beta.numpy() ** 2,
               np.square(head).sum(axis=(0, 1, 3))]  # fmt: skip
    by_hand = sum(m / m.mean() for m in members) / 4
    group = next(g for g in ctrl.analysis.prunable_groups if "mid" in g.producers)
    np.testing.assert_allclose(ctrl._scores()[group.id], by_hand, rtol=1e-5)
    ctrl.set_pruning_level(0.5)
    kept = np.flatnonzero(ctrl.keeps()["mid"]["out"])
    assert kept.tolist() == np.sort(np.argsort(-by_hand, kind="stable")[:8]).tolist()
