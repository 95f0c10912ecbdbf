"""Train the PyTorch Fashion-MNIST demo's baseline and ship it with the package.

    PYTHONPATH=src python scripts/train_demo_baseline.py     # about 2 minutes on 2 cores

``make demo`` then loads it instead of training it: ``filterprune.examples._training.baseline``
looks in ``SHIPPED`` for a file named as its cache file, whose name carries a hash of the
whole recipe. The weights are stored in half precision (a third of a megabyte) and the
accuracy recorded is the one measured with them. Rerun this after changing ``SmallCNN``,
the baseline recipe or the demo's ``--baseline-epochs`` default (the old file then no
longer matches: delete it).
"""

from __future__ import annotations

import tempfile

import torch

from filterprune._atomic import atomic_write
from filterprune.examples._config import demo_arguments
from filterprune.examples._training import (
    SHIPPED,
    SmallCNN,
    baseline,
    evaluate,
    fashion_mnist_loaders,
)


def main() -> None:
    args = demo_arguments(__doc__.splitlines()[0], [])  # the demo's defaults
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(tmp, epochs=args.baseline_epochs, train_limit=args.train_limit)
        payload = torch.load(base.path, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model = SmallCNN(width=payload["config"]["width"])
    model.load_state_dict(half)
    _, test_loader = fashion_mnist_loaders()
    payload.update(state_dict=half, accuracy=evaluate(model, test_loader))
    SHIPPED.mkdir(exist_ok=True)
    target = SHIPPED / base.path.name
    atomic_write(target, lambda tmp: torch.save(payload, tmp))
    print(f"wrote {target}: test accuracy {payload['accuracy']:.4f} in half precision "
          f"(float32 {base.accuracy:.4f})")


if __name__ == "__main__":
    main()
