"""Training helpers of the examples: model, loops, latency and the cached baseline."""

import pytest
import torch
import torch.fx

from filterprune.examples import _training
from filterprune.examples._config import demo_arguments
from filterprune.examples._training import (
    SmallCNN,
    baseline,
    compare_latency,
    evaluate,
    fashion_mnist_loaders,
    limit_threads,
    measure_latency,
    train_one_epoch,
)


@pytest.fixture(scope="module")
def loaders():
    limit_threads()
    return fashion_mnist_loaders(batch_size=64, train_limit=512, test_limit=256)


def test_loaders_yield_normalised_batches(loaders):
    train_loader, test_loader = loaders
    assert len(train_loader.dataset) == 512
    assert len(test_loader.dataset) == 256
    images, labels = next(iter(train_loader))
    assert images.shape == (64, 1, 28, 28)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    everything = test_loader.dataset.tensors[0]
    assert everything.mean().item() == pytest.approx(0.0, abs=0.1)
    assert everything.std().item() == pytest.approx(1.0, abs=0.1)


def test_loaders_reject_a_bad_batch_size():
    with pytest.raises(ValueError, match="`batch_size` must be a positive int. Received: "
                                         "batch_size=0."):
        fashion_mnist_loaders(batch_size=0)


def test_small_cnn_output_shape_and_size():
    model = SmallCNN()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= params <= 300_000


def test_small_cnn_is_fx_traceable():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(traced(x), model(x))
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert any("add" in getattr(t, "__name__", str(t)) for t in targets)  # residual add


def test_one_short_epoch_learns(loaders):
    train_loader, test_loader = loaders
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    stats = train_one_epoch(model, train_loader, optimizer,
                            on_step=lambda step, loss: losses.append((step, loss)))
    assert [step for step, _ in losses] == list(range(len(train_loader)))
    assert set(stats) == {"loss", "accuracy", "seconds"}
    learned = sum(loss for _, loss in losses[-2:]) / 2 < losses[0][1]
    assert learned or evaluate(model, test_loader) > 0.3


def test_extra_loss_is_added():
    batches = [(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))]
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, batches, optimizer,
                            extra_loss=lambda m: torch.tensor(100.0))
    assert stats["loss"] > 100.0


def test_evaluate_restores_training_mode(loaders):
    model = SmallCNN().train()
    accuracy = evaluate(model, loaders[1])
    assert 0.0 <= accuracy <= 1.0
    assert model.training


def test_measure_latency_returns_ordered_positive_numbers():
    result = measure_latency(SmallCNN(), torch.zeros(1, 1, 28, 28), repeats=10, warmup=2)
    assert 0.0 < result["median_ms"] <= result["p90_ms"]


def test_compare_latency_returns_positive_numbers():
    sample = torch.zeros(8, 1, 28, 28)
    result = compare_latency(SmallCNN(width=32), SmallCNN(width=8), sample, rounds=10, warmup=2,
                             threads=1)
    assert result["a_median_ms"] > 0.0
    assert result["b_median_ms"] > 0.0
    assert result["ratio"] == pytest.approx(result["b_median_ms"] / result["a_median_ms"])


def test_baseline_trains_once_then_reuses_the_cache(tmp_path):
    options = {"epochs": 1, "width": 8, "train_limit": 256, "test_limit": 256, "verbose": False}
    first = baseline(tmp_path, **options)
    assert not first.from_cache
    assert first.path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp file left
    second = baseline(tmp_path, **options)
    assert second.from_cache
    assert second.path == first.path
    assert second.accuracy == first.accuracy
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value)
    other = baseline(tmp_path, **options, lr=1e-3)  # a changed hyperparameter retrains
    assert not other.from_cache
    assert other.path != first.path


def test_a_shipped_baseline_stands_in_for_a_missing_cache(tmp_path, monkeypatch):
    options = {"epochs": 1, "width": 8, "train_limit": 256, "test_limit": 256, "verbose": False}
    trained = baseline(tmp_path / "cache", **options)
    payload = torch.load(trained.path, weights_only=True)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    torch.save(payload, shipped_dir / trained.path.name)
    monkeypatch.setattr(_training, "SHIPPED", shipped_dir)
    loaded = baseline(tmp_path / "empty", **options)
    assert loaded.shipped and loaded.from_cache
    assert loaded.path == shipped_dir / trained.path.name
    assert not (tmp_path / "empty").exists()  # nothing trained, nothing cached
    for key, value in loaded.model.state_dict().items():
        assert value.dtype == trained.model.state_dict()[key].dtype  # float32 again
        torch.testing.assert_close(value, payload["state_dict"][key].to(value.dtype))
    assert not baseline(tmp_path / "cache", **options).shipped  # the cache comes first


def test_the_demo_loads_its_shipped_baseline_without_training(tmp_path, monkeypatch):
    def no_training(*_args):
        raise AssertionError("the demo's baseline was trained, not loaded")

    monkeypatch.setattr(_training, "_train_baseline", no_training)
    args = demo_arguments("", [])
    base = baseline(tmp_path, epochs=args.baseline_epochs, train_limit=args.train_limit,
                    verbose=False)
    assert base.shipped
    assert base.path.parent == _training.SHIPPED
    assert base.path.stat().st_size < 400_000  # half precision
    assert 0.89 <= base.accuracy <= 0.92
    assert sorted(p.name for p in _training.SHIPPED.iterdir()) == [base.path.name]
