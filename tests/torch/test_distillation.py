"""``knowledge_distillation`` in the ``compression`` list: the dense model teaches."""

import copy

import pytest
import torch
from torch_helpers import randomize_bn

from filterprune import NNCFConfig
from filterprune.core.distillation import KnowledgeDistillationParams
from filterprune.errors import ConfigError
from filterprune.testing.cifar_nets import ResNet20
from filterprune.torch import create_compressed_model
from filterprune.torch.masks import is_masked


def config(kd, pruning=True):
    entries = [{"algorithm": "filter_pruning", "pruning_init": 0.5,
                "params": {"schedule": "baseline"}}] if pruning else []  # fmt: skip
    entries.append({"algorithm": "knowledge_distillation", **kd})
    return NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                 "compression": entries})  # fmt: skip


def net():
    torch.manual_seed(0)
    return randomize_bn(ResNet20())


def kl_by_hand(student, teacher, t):
    p_t = torch.softmax(teacher / t, dim=1)
    return (p_t * (p_t.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean() * t * t


def _distil(ctrl, model, x, steps):
    """``steps`` SGD steps on the distillation term alone; its values."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(steps):
        model(x)
        loss = ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["softmax", "mse"])
def test_loss_is_distance_to_the_dense_teacher(kind):
    model = net()
    dense = copy.deepcopy(model).eval()
    ctrl, model = create_compressed_model(model, config({"type": kind, "temperature": 3.0,
                                                          "scale": 2.0}))  # fmt: skip
    x = torch.randn(4, 1, 28, 28)
    model.train()
    out = model(x)
    loss = ctrl.loss()  # pruning's zero + distillation's term
    with torch.no_grad():
        ref = dense(x)
    expected = kl_by_hand(out, ref, 3.0) if kind == "softmax" else ((out - ref) ** 2).mean()
    torch.testing.assert_close(loss, 2.0 * expected, rtol=1e-4, atol=1e-6)
    assert loss.item() > 0  # pruning changed the student
    loss.backward()
    assert model.fc.weight.grad is not None
    assert all(p.grad is None for p in ctrl.get("knowledge_distillation").teacher.parameters())


def test_no_term_without_a_training_forward():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    assert ctrl.loss().item() == 0.0
    model.eval()
    model(torch.randn(2, 1, 28, 28))
    assert ctrl.loss().item() == 0.0
    model.train()
    model(torch.randn(2, 1, 28, 28))
    assert ctrl.loss().item() > 0.0
    assert ctrl.loss().item() == 0.0  # each forward's term is taken once


def test_statistics_print_the_settings_beside_pruning():
    ctrl, _ = create_compressed_model(net(), config({"type": "mse", "temperature": 2.0}))
    stats = ctrl.statistics()
    assert stats.knowledge_distillation == {"type": "mse", "temperature": 2.0, "scale": 1.0}
    text = str(stats)
    assert "Filter pruning statistics" in text
    assert "Knowledge distillation statistics\n  type        : mse\n  temperature : 2.0" in text


def test_unpruned_student_matches_teacher():
    ctrl, model = create_compressed_model(net(), config({"type": "softmax"}, pruning=False))
    model.train()
    model(torch.randn(4, 1, 28, 28))
    # train-mode BN uses batch statistics, the teacher its running ones: a small gap only
    assert ctrl.loss().item() < 1.0
    assert ctrl.name == "knowledge_distillation"


def test_distillation_alone_strips_exports_and_resumes(tmp_path):
    """Alone, its controller had no ``strip`` or ``export_model``."""
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}, pruning=False))
    small = ctrl.strip()
    assert not small._forward_hooks and model._forward_hooks
    ctrl.export_model(str(tmp_path / "student.onnx"))
    assert (tmp_path / "student.onnx").stat().st_size > 0
    state = ctrl.get_compression_state()
    resumed, _ = create_compressed_model(net(), config({"type": "mse"}, pruning=False), state)
    assert resumed.params.type == "mse"


def test_strip_drops_the_tap_and_training_reduces_the_gap():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    losses = _distil(ctrl, model, torch.randn(16, 1, 28, 28), steps=5)
    assert losses[-1] < losses[0]
    small = ctrl.strip()
    assert not small._forward_hooks and model._forward_hooks  # the training model keeps it
    state = ctrl.get_compression_state()
    assert [c["algorithm"] for c in state["children"]] == ["filter_pruning",
                                                           "knowledge_distillation"]
    resumed, _ = create_compressed_model(net(), config({"type": "mse"}), state)
    assert resumed.get("knowledge_distillation").params.type == "mse"


def test_settings_in_code_and_schema():
    params = KnowledgeDistillationParams(type="mse", scale=0.5)
    assert params.to_algorithm_dict() == {"algorithm": "knowledge_distillation", "type": "mse",
                                          "temperature": 1.0, "scale": 0.5}  # fmt: skip
    with pytest.raises(ConfigError, match=r"`compression\[1\]\.temperature` must be a number > 0\. "
                       r"Received: temperature=0\."):
        config({"type": "softmax", "temperature": 0})
    with pytest.raises(ConfigError, match=r"`compression\[1\]\.type` must be one of 'softmax', "
                       r"'mse'\. Received: type='kl'\."):
        config({"type": "kl"})


def test_teacher_is_the_dense_model_not_the_student():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    teacher = ctrl.get("knowledge_distillation").teacher
    assert teacher is not model and not teacher.training
    assert any(is_masked(m) for m in model.modules())
    assert not any(is_masked(m) for m in teacher.modules())


def test_a_teacher_listed_after_quantization_is_the_float_model():
    """The teacher was copied after the quantizers went in: fake-quantized at ranges its
    own first batch set."""
    entries = [{"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}},
               {"algorithm": "knowledge_distillation", "type": "mse"}]  # fmt: skip
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                   "compression": entries})  # fmt: skip
    model = net()
    dense = copy.deepcopy(model).eval()
    ctrl, model = create_compressed_model(model, config)
    teacher = ctrl.get("knowledge_distillation").teacher
    x = torch.randn(4, 1, 28, 28) * 50
    with torch.no_grad():
        assert torch.equal(teacher(x), dense(x))


class _Heads(torch.nn.Module):
    """A segmentation head ``(N, 5, H, W)``; in training mode, an auxiliary head too."""

    def __init__(self, classes=5, aux=False):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.head, self.aux = torch.nn.Conv2d(8, classes, 1), torch.nn.Conv2d(8, 3, 1)
        self.with_aux = aux

    def forward(self, x):
        y = self.body(x)
        if self.with_aux and self.training:
            return self.head(y), self.aux(y)
        return self.head(y)


class _Cropped(_Heads):
    def forward(self, x):
        y = super().forward(x)
        return y[:, :2] if self.training else y


def _kd(model, kind="softmax", x=None):
    config = NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 6, 6]}, "compression": [
        {"algorithm": "knowledge_distillation", "type": kind, "temperature": 2.0}]})
    ctrl, model = create_compressed_model(model, config)
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)  # the student moves off the teacher
    model.train()
    out = model(torch.randn(3, 1, 6, 6) if x is None else x)
    return ctrl, out


def test_softmax_distillation_is_over_the_class_axis():
    """Over axis 1, per pixel, as ``F.cross_entropy``; it was over the width."""
    x = torch.randn(3, 1, 6, 6)
    ctrl, out = _kd(_Heads(), x=x)  # the only entry: ctrl is distillation's
    with torch.no_grad():
        ref = ctrl.teacher(x)
    flat = lambda t: t.movedim(1, -1).reshape(-1, 5)  # noqa: E731 - one row a pixel
    torch.testing.assert_close(ctrl.loss(), kl_by_hand(flat(out), flat(ref), 2.0), rtol=1e-4,
                               atol=1e-7)  # fmt: skip


def test_outputs_without_classes_or_pairs_are_refused_and_aux_heads_left_out():
    ctrl, _ = _kd(_Heads(classes=1))
    with pytest.raises(ValueError, match=r"class axis \(axis 1\) of 2 or more .* shape "
                       r"\(3, 1, 6, 6\).* \"type\": \"mse\""):
        ctrl.loss()
    ctrl, out = _kd(_Heads(aux=True))  # the eval-mode teacher returns no auxiliary head
    assert len(out) == 2
    assert ctrl.loss() > 0
    ctrl, _ = _kd(_Cropped(), "mse")
    with pytest.raises(ValueError, match=r"training mode .* eval mode .* do not match"):
        ctrl.loss()


def test_the_teacher_follows_the_students_dtype():
    ctrl, model = create_compressed_model(net(), config({"type": "mse"}))
    model.double().train()
    model(torch.randn(2, 1, 28, 28, dtype=torch.float64))
    assert ctrl.loss().dtype == torch.float64


def test_a_combined_strip_refuses_a_misspelt_keyword():
    """``strip(shrnk=False)`` returned the cut model, where a single controller refuses."""
    ctrl, _ = create_compressed_model(net(), config({"type": "mse"}))
    with pytest.raises(TypeError, match="shrnk"):
        ctrl.strip(shrnk=False)
    with pytest.raises(TypeError, match="do_cpy"):
        ctrl.strip(do_cpy=False)
    numel = [sum(p.numel() for p in m.parameters()) for m in (ctrl.strip(shrink=False), net())]
    assert numel[0] == numel[1]


def test_a_resume_goes_on_with_the_runs_teacher_or_is_refused():
    """The teacher is a copy of the model given at creation: a resume from a fresh model
    distilled from that one (the loss 0.0168 against 0.0060 uninterrupted), unsaid. The
    state carries the teacher's fingerprint; a resume with the dense weights loaded before
    creation, and the checkpoint's after, goes on as the run would have."""
    ctrl, model = create_compressed_model(net(), config({"type": "softmax", "temperature": 4}))
    x = torch.randn(8, 1, 28, 28)
    _distil(ctrl, model, x, steps=2)
    state, weights = ctrl.get_compression_state(), copy.deepcopy(model.state_dict())
    fresh = ResNet20()  # torch's own init: not the run's dense weights
    with pytest.raises(ConfigError, match="load the weights the run started from"):
        create_compressed_model(fresh, config({"type": "softmax", "temperature": 4}), state)
    resumed_ctrl, resumed = create_compressed_model(
        net(), config({"type": "softmax", "temperature": 4}), state)  # fmt: skip
    resumed.load_state_dict(weights)
    model(x), resumed.train()(x)
    assert torch.equal(ctrl.loss(), resumed_ctrl.loss())


class _Tagged(torch.nn.Conv2d):
    """A layer whose state_dict holds a non-tensor (``get_extra_state``)."""

    def get_extra_state(self):
        return {"version": 2}

    def set_extra_state(self, state):
        pass


@pytest.mark.parametrize("case", ["bfloat16", "extra_state"])
def test_the_teachers_fingerprint_takes_any_state_dict(case):
    """NumPy has no bfloat16, and a state_dict may hold a non-tensor: creation failed."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), _Tagged(8, 8, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 10))  # fmt: skip
    cfg = config({"type": "mse"})
    if case == "bfloat16":
        model = model.to(torch.bfloat16)
        cfg["input_info"]["type"] = "bfloat16"
    ctrl, _ = create_compressed_model(copy.deepcopy(model), cfg)
    state = ctrl.get_compression_state()
    create_compressed_model(copy.deepcopy(model), cfg, state)  # resumes
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1
    with pytest.raises(ConfigError, match="differs from the teacher"):
        create_compressed_model(model, cfg, state)


def test_a_state_without_the_teachers_fingerprint_is_taken_with_a_warning(caplog):
    ctrl, _ = create_compressed_model(net(), config({"type": "mse"}))
    state = copy.deepcopy(ctrl.get_compression_state())
    del state["children"][1]["teacher"]  # as saved before states kept it
    with caplog.at_level("WARNING", logger="filterprune"):
        create_compressed_model(ResNet20(), config({"type": "mse"}), state)
    assert "no teacher's fingerprint" in caplog.text
