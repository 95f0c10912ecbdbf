"""Models and checks shared by the PyTorch tests."""

import copy

import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.torch import create_compressed_model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial statistics so eval outputs have a real scale."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def run_onnx(path, x: torch.Tensor) -> tuple[list[str], list]:
    """The output names of the ONNX file at ``path`` and its outputs on ``x`` (onnxruntime)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def make_config(sample=(1, 3, 32, 32), **params):
    init = params.pop("pruning_init", 0.5)
    extra = params.pop("extra", {})
    algo = {"algorithm": "filter_pruning", "pruning_init": init, "params": params, **extra}
    return NNCFConfig.from_dict({"input_info": {"sample_size": list(sample)}, "compression": algo})


def untraced(x):
    """``x``, its batch read by Python's ``len()``: torch.fx refuses a tensor's length (it
    could be a channel count taken as a number), so torch.export captures the model."""
    return x[: len(x)]


def assert_strip_equal(ctrl, model, x, tol=1e-4):
    model.eval()
    small = ctrl.strip().eval()
    with torch.no_grad():
        ref, out = model(x), small(x)
    scale = ref.abs().max().clamp_min(1e-6)
    assert ((ref - out).abs().max() / scale) <= tol
    return small


class SmallNet(nn.Module):
    """Residual add, concat, depthwise conv, SE gate, flatten -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.bna = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(40, 40, 3, padding=1, groups=40)
        self.se1 = nn.Conv2d(40, 8, 1)
        self.se2 = nn.Conv2d(8, 40, 1)
        self.down = nn.Conv2d(40, 32, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + torch.relu(self.bna(self.a(x)))
        x = torch.cat([x, self.b(x)], dim=1)
        x = self.dw(x)
        gate = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = torch.relu(self.down(x * gate))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def train_steps(ctrl, model, opt, epochs, seed, steps=3, shape=(8, 3, 32, 32)):
    """``epochs`` epochs of ``steps`` steps on seeded random batches of ``shape``; the loss
    includes ``ctrl.loss()`` and the scheduler is stepped as a user would."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        for _ in range(steps):
            ctrl.scheduler.step()
            x = torch.randn(*shape, generator=g)
            loss = model(x).square().mean() + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()


def checkpoint_and_resume(base, config, resume_config, path, **sgd):
    """Run the reference checkpoint flow on copies of ``base``.

    Uninterrupted: 2 epochs, checkpoint to ``path``, 2 more epochs. Resumed: a fresh copy
    built with ``resume_config`` and the saved compression state, weights and optimizer.

    Returns:
        ``(ctrl, model)`` after 4 epochs and ``(ctrl2, model2, opt2)`` ready to train the
        last 2 epochs (``train_steps(..., seed=2)``).
    """
    ctrl, model = create_compressed_model(copy.deepcopy(base), config)
    opt = torch.optim.SGD(model.parameters(), **sgd)
    train_steps(ctrl, model, opt, 2, seed=1)
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                "compression_state": ctrl.get_compression_state()}, path)  # fmt: skip
    train_steps(ctrl, model, opt, 2, seed=2)
    ckpt = torch.load(path)
    ctrl2, model2 = create_compressed_model(copy.deepcopy(base), resume_config,
                                            compression_state=ckpt["compression_state"])
    model2.load_state_dict(ckpt["state_dict"])
    opt2 = torch.optim.SGD(model2.parameters(), **sgd)
    opt2.load_state_dict(ckpt["optimizer"])
    return (ctrl, model), (ctrl2, model2, opt2)


def classify_steps(model, ctrl, optimizer, steps=2, size=(1, 28, 28)):
    """``steps`` training steps on random 10-class batches, with ``ctrl.loss()`` added."""
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, *size), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
