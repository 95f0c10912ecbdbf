"""A forward set on a module instance (``m.forward = wrap(m.forward)``), as
mixed-precision code runs a model or one layer under autocast. Masks and quantizers
swap a layer's class, whose forward such a function goes around: the layer stays whole.
A copy of the model (strip, export) shares the function, which would call the original
model: the copy's calls its own modules."""

import functools
import types

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_helpers import assert_strip_equal, make_config, run_onnx

import filterprune.torch.capture as capture_module
from filterprune.testing.zoo import nondegenerate
from filterprune.torch import create_compressed_model


class Net(nn.Module):
    """A cut channel of ``stem`` is 0.5 after the sigmoid: ``c1`` reads it unless its
    input masks act."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.c1(torch.sigmoid(self.stem(x)))
        x = F.relu(self.b2(self.c2(torch.tanh(x))))
        return self.fc(x.mean((2, 3)))


def in_float32(forward, autocast=False):
    """A wrapper as mixed-precision code writes it: a closure over the bound forward."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not autocast:
            return forward(*args, **kwargs).float()
        with torch.autocast("cpu", enabled=False):
            return forward(*args, **kwargs).float()

    return run


class OwnConv(nn.Module):
    """A layer of the user's own: its forward passes its parameters to F.conv2d."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.zeros(16))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


def _own_forward(self, x):  # a conv's own forward, bound to it
    return F.conv2d(x, self.weight, self.bias, padding=1)


def _prune(model, export=False, monkeypatch=None):
    if export:
        monkeypatch.setattr(capture_module, "capture_fx", _refuse)
    config = make_config((2, 3, 16, 16), prune_first_conv=True, filters_multiple_of=1)
    return create_compressed_model(nondegenerate(model), config)


def _refuse(*args, **kwargs):
    raise capture_module._TraceError("torch.fx refused")


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("how", ["closure", "method", "own layer"])
def test_a_layer_whose_forward_is_set_on_the_instance_stays_whole(how, export, monkeypatch):
    """It was cut and ran unmasked: stripped 0.52 off the masked model (bound method),
    or the stripped model failed (closure)."""
    model = Net()
    if how == "own layer":
        model.c1 = OwnConv()
    model.c1.forward = types.MethodType(_own_forward, model.c1) if how == "method" else \
        in_float32(model.c1.forward)  # fmt: skip
    ctrl, model = _prune(model, export, monkeypatch)
    held = {p: r for producers, r in ctrl.statistics().unpruned for p in producers}
    kind = "OwnConv" if how == "own layer" else "Conv2d"
    assert f"{kind} c1's forward is set on the instance (c1.forward = " in held["stem"]
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    assert small.c1.weight.shape[:2] == (16, 16) and small.c2.out_channels < 32


def test_a_copy_of_a_model_whose_forward_is_wrapped_calls_its_own_modules(tmp_path):
    """The stripped copy's forward called the original, masked model: equal outputs, from
    the wrong model, and an export of that model."""
    model = Net()
    model.forward = in_float32(model.forward, autocast=True)
    ctrl, model = _prune(model)
    x = torch.randn(2, 3, 16, 16)
    small = assert_strip_equal(ctrl, model, x, tol=1e-5)
    calls = []
    for module in model.modules():
        module.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        ref = small(x)
    ctrl.export_model(str(tmp_path / "m.onnx"), shrink=True)
    assert small.c1.out_channels < 16 and not calls, calls
    torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / "m.onnx", x)[1][0]), ref,
                               rtol=1e-4, atol=1e-5)  # fmt: skip


class Wrapper:
    """A callable object as the forward: deepcopy copies it, bound to the copy already."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args):
        return self.forward(*args)


def _run_with_stem(layers, model, x):
    for layer in layers:
        x = layer(x)
    return model.fc(F.relu(model.b2(model.c2(torch.tanh(x)))).mean((2, 3)))


@pytest.mark.parametrize("how", ["object", "partial over a list", "closure over a list"])
def test_what_a_copy_made_its_own_stays_so(how):
    """A callable object or a partial deepcopy had bound to the copy was replaced by the
    original's: the stripped model ran the original (five of its modules), and a
    distillation teacher was the student. A closure over the model and a list of its
    layers was rebound in part: the strip failed (16 channels against 8)."""
    model = Net()
    if how == "object":
        model.forward = Wrapper(model.forward)
    elif how == "partial over a list":
        model.forward = functools.partial(_run_with_stem, [model.stem, torch.sigmoid, model.c1],
                                          model)  # fmt: skip
    else:
        layers, owner = [model.stem, torch.sigmoid, model.c1], model
        model.forward = lambda x: _run_with_stem(layers, owner, x)
    ctrl, model = _prune(model)
    small = assert_strip_equal(ctrl, model, torch.randn(2, 3, 16, 16), tol=1e-5)
    calls = []
    for module in model.modules():
        module.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        small(torch.randn(2, 3, 16, 16))
    assert not calls and small.stem.out_channels < 16


_GLOBAL_MODEL = []


def _through_a_global(x):
    return _GLOBAL_MODEL[0].fc(torch.zeros(x.shape[0], 32)) + Net.forward(_GLOBAL_MODEL[0], x)


def test_a_forward_reaching_the_model_through_a_global_is_said():
    model = Net()
    _GLOBAL_MODEL[:] = [model]
    model.forward = _through_a_global
    ctrl, model = _prune(model)
    with pytest.warns(UserWarning, match=r"Net.forward, set on the instance, reaches the "
                      r"original model's .* the copy strip\(\) and export_model make would run "
                      r"the original"):  # fmt: skip
        ctrl.strip()
    _GLOBAL_MODEL.clear()


def test_a_wrapper_keeps_the_signature_it_was_given(tmp_path):
    """accelerate's form, update_wrapper(partial(hook, module), old forward): the copy's
    lost ``__wrapped__``, so the ONNX input was named args_0, not x."""
    model = Net()

    def hooked(module, *args, **kwargs):
        return module._old_forward(*args, **kwargs)

    model._old_forward = model.forward
    model.forward = functools.update_wrapper(functools.partial(hooked, model), model.forward)
    ctrl, model = _prune(model)
    ctrl.export_model(str(tmp_path / "m.onnx"))
    assert [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input] == ["x"]
