"""``filterprune prune MODEL --data DIR --epochs N --out RUN_DIR``: prune while fine-tuning.

A run folder holds everything a run needs to continue and to be reported on::

    run.json          settings, resolved config, classes, status
    checkpoint.pt     after each epoch: weights, compression state, optimizer, history
    history.json      one row per epoch (epoch 0: the dense model)
    dense.onnx        the model before pruning (latency and size baseline)
    model_stripped.pt the pruned model's state_dict, filters removed
    model_zeroed.onnx the ONNX export with pruned filters zeroed
    model.onnx        that export with the zero filters removed (``convert``)
    summary.json      before/after: accuracy, FLOPs, parameters, file size, latency
    report.html/.md   ``filterprune report RUN_DIR``

Every file is written atomically; ``--resume RUN_DIR`` continues after the last complete
epoch with the same data order, dropout draws, learning rate and masks as an uninterrupted
run. A config with ``accuracy_aware_training`` searches the level instead
(:mod:`.finetune_aa`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_torch_save, atomic_write_text
from ..cli_common import RunFailed, UsageError, pruning_child
from ..cli_models import load_torch_model, load_weights, parse_spec, torch_load
from ..core.config import Config
from ..datasets.image_folder import Data, open_data
from ..examples._training import evaluate, train_one_epoch

__all__ = ["start_run", "resume_run", "RUN_FILE", "CHECKPOINT"]

RUN_FILE, CHECKPOINT, HISTORY = "run.json", "checkpoint.pt", "history.json"
DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}


class OnDevice:
    """Batches of ``loader`` moved to ``device``."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.loader)


class Autocast(nn.Module):
    """Runs ``inner``'s forward under bfloat16 autocast on CUDA; float32 outputs, so the
    loss and the backward pass stay outside autocast."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = self.inner(x)
        return out.float()


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here. Use --device cpu "
                         "or auto.")  # fmt: skip
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


# -- starting and resuming -----------------------------------------------------------------
def start_run(settings: dict[str, Any], config: Config, run_dir: str) -> Path:
    """Create ``run_dir`` and train; returns the folder.

    Raises:
        UsageError: ``run_dir`` exists and is not empty (use ``--resume``).
    """
    folder = Path(run_dir)
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir())):
        raise UsageError(f"--out {run_dir} already exists and is not empty. Continue that run "
                         f"with --resume {run_dir}, or choose a new --out folder.")
    run = {"settings": settings, "config": dict(config), "status": "training",
           "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    prepared = _prepare(run)  # bad data or a model that does not fit: nothing written yet
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / RUN_FILE, run)
    _train(folder, run, None, *prepared)
    return folder


def read_run(run_dir: str) -> dict[str, Any]:
    """The ``run.json`` of a run folder.

    Raises:
        UsageError: The folder is not a run folder.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a run folder: it has no {RUN_FILE}. Give the "
                         "--out folder of a `filterprune prune --data ...` run.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} cannot be read ({err}); the run cannot be resumed.") from None


def resume_run(run_dir: str, epochs: int | None) -> Path:
    """Continue the run in ``run_dir`` after its last complete epoch (``epochs``: a new
    total, to train longer)."""
    folder = Path(run_dir)
    run = read_run(run_dir)
    ckpt = None
    if (folder / CHECKPOINT).is_file():
        ckpt = _checkpoint(folder / CHECKPOINT)
    done = ckpt["epoch"] if ckpt else 0
    if epochs is not None:
        if epochs < done:
            raise UsageError(f"--epochs {epochs} is below the {done} epochs {run_dir} already "
                             f"trained. Give --epochs {done} or more.")
        run["settings"]["epochs"] = epochs
    searched = "accuracy_aware_training" in run["config"]  # may end before --epochs
    summary = folder / "summary.json"
    if (done >= run["settings"]["epochs"] or searched) and summary.is_file():
        if run.get("status") != "done" or not (folder / "report.html").is_file():
            # stopped between summary.json and the report, or while writing the report
            from .run_outputs import close_run

            html, _ = close_run(folder, run)
            print(f"{run_dir}: the run was stopped after its summary; wrote {html.name}.")
        print(f"{run_dir}: all {done} epochs are done; nothing to resume. "
              f"See `filterprune report {run_dir}`.")
        return folder
    print(f"resuming {run_dir} after epoch {done} of {run['settings']['epochs']}")
    # a summary of an earlier finish (a longer --epochs now) would mark the run done
    summary.unlink(missing_ok=True)
    run["status"] = "training"
    prepared = _prepare(run)
    _write_json(folder / RUN_FILE, run)
    _train(folder, run, ckpt, *prepared)
    return folder


_CHECKPOINT_KEYS = ("epoch", "state_dict", "compression_state", "optimizer", "lr_schedule",
                    "history")


def _checkpoint(path: Path) -> dict[str, Any]:
    """The run's checkpoint, refused by name where it is not one this command wrote."""
    try:
        ckpt = torch_load(str(path), what="checkpoint")
    except UsageError as err:
        raise UsageError(f"{err} Move {path} away to restart the run from epoch 0 (its "
                         "settings kept), or start a new run.") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UsageError(f"{path} is not a checkpoint of `filterprune prune` (it lacks "
                         f"{', '.join(missing)}). Put back the run's own checkpoint.pt, or "
                         "move it away to restart the run from epoch 0.")  # fmt: skip
    return ckpt


# -- the run -------------------------------------------------------------------------------
def _build(settings: dict[str, Any], data: Data) -> nn.Module:
    spec = parse_spec(settings["model"])
    weights = settings.get("weights")
    classes = None if weights or spec.kind not in ("torchvision", "timm") else len(data.classes)
    torch.manual_seed(settings["seed"])
    model = load_torch_model(spec, trusted=settings["trusted"], num_classes=classes)
    if weights:
        load_weights(model, weights, trusted=settings["trusted"])
    _check_outputs(model, data, spec.text)
    return model


def _check_outputs(model: nn.Module, data: Data, what: str) -> None:
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(data.sample_size))
    except Exception as err:  # noqa: BLE001 - any failure on the sample is the user's to fix
        raise UsageError(f"MODEL {what} failed on an input of shape {data.sample_size} "
                         f"({type(err).__name__}: {err}). Set --input-size (or the "
                         "config's input_info) to a size the model accepts.") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < len(data.classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"MODEL {what} must give one logit per class: shape (batch, >= "
            f"{len(data.classes)}) for the {len(data.classes)} classes of the data. Received: "
            f"{got}. Give a model with {len(data.classes)} outputs.")
    if out.shape[1] > len(data.classes):
        logging.getLogger("filterprune").warning(
            "MODEL %s gives %d logits for the %d classes of the data: the loss and accuracy "
            "take them all, so predicting one of the other %d counts as wrong. Give a model "
            "with %d outputs.", what, out.shape[1], len(data.classes),
            out.shape[1] - len(data.classes), len(data.classes))


def _data(settings: dict[str, Any], config: Config) -> Data:
    sizes = config.sample_sizes()
    return open_data(settings["data"], sizes[0] if sizes else None,
                     batch_size=settings["batch_size"], workers=settings["workers"],
                     seed=settings["seed"], train_limit=settings.get("train_limit"),
                     val_limit=settings.get("val_limit"))  # fmt: skip


def _optimizer(settings: dict[str, Any], model: nn.Module, steps: int):
    lr = settings.get("lr") or DEFAULT_LR[settings["optimizer"]]
    params, decay = model.parameters(), settings["weight_decay"]
    if settings["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def _stretch(schedule: Any, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Lay the cosine over ``steps`` (a longer ``--epochs`` on resume), at the rate it gives
    where the run is: the scheduler steps from the rate it holds, which a finished run's
    cosine left at 0 (the added epochs trained at 0)."""
    if schedule.T_max == max(1, steps):
        return
    schedule.T_max = max(1, steps)
    done = min(schedule.last_epoch, schedule.T_max)
    lrs = [schedule.eta_min + (base - schedule.eta_min) * (1 + math.cos(math.pi * done /
           schedule.T_max)) / 2 for base in schedule.base_lrs]  # fmt: skip
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    schedule._last_lr = lrs  # what get_last_lr() reports


def _compress(model: nn.Module, config: Config, data: Data, state: Any, device: torch.device):
    from . import register_default_init_args
    from .cli import compress_quietly

    config = register_default_init_args(config, data.train, val_loader=data.val,
                                        **_legr_args(device))  # fmt: skip
    return compress_quietly(model, config, state)


def _legr_args(device: torch.device) -> dict[str, Any]:
    """``validate_fn`` and ``train_steps_fn`` of a LeGR search (only ``learned_ranking``
    reads them): the run's top-1 accuracy and cross-entropy, on ``device``."""

    def validate(model: nn.Module, loader: Any) -> float:
        return evaluate(model, OnDevice(loader, device))

    def train_steps(loader: Any, model: nn.Module, optimizer: Any, ctrl: Any,
                    steps: int) -> None:  # fmt: skip
        model.train()
        for _, (images, labels) in zip(range(steps), OnDevice(loader, device), strict=False):
            loss = nn.functional.cross_entropy(model(images), labels) + ctrl.loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return {"validate_fn": validate, "train_steps_fn": train_steps}


def _prepare(run: dict[str, Any]) -> tuple[Data, torch.device, nn.Module]:
    """The run's data, device and model, checked against each other."""
    settings = run["settings"]
    data = _data(settings, Config.from_dict(run["config"]))
    run["classes"] = data.classes
    device = _device(settings["device"])
    return data, device, _build(settings, data)


def _train(folder: Path, run: dict[str, Any], ckpt: dict[str, Any] | None, data: Data,
           device: torch.device, model: nn.Module) -> None:  # fmt: skip
    from .run_outputs import dense_baseline, finish

    settings = run["settings"]
    config = Config.from_dict(run["config"])
    if ckpt is None:
        history = [dense_baseline(model, data, folder, device)]
    else:
        history = ckpt["history"]
    model.to(device)
    ctrl, model = _compress(model, config, data, ckpt["compression_state"] if ckpt else None,
                            device)  # fmt: skip
    if ckpt:
        model.load_state_dict(ckpt["state_dict"])
    steps = settings["epochs"] * len(data.train)
    optimizer, schedule = _optimizer(settings, model, steps)
    searched = "accuracy_aware_training" in config
    if ckpt and not searched:  # the search makes its optimizers (and loads this into one)
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["lr_schedule"])
        _stretch(schedule, optimizer, steps)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    print(f"training on {device} ({'bfloat16 mixed precision' if amp else 'float32'}), "
          f"{len(data.train.dataset)} training and {len(data.val.dataset)} validation images, "
          f"{len(data.classes)} classes")  # fmt: skip
    loop = _Loop(folder, settings, data, device, ctrl, model, optimizer, schedule, amp)
    short = loop.pruning.scheduler.short_of_target(settings["epochs"]) \
        if loop.pruning is not None and not searched else None  # fmt: skip
    if short:
        logging.getLogger("filterprune").warning("filter_pruning: %s", short)
    notes = []
    if searched:
        from .finetune_aa import run_accuracy_aware

        notes = run_accuracy_aware(loop, config, history, ckpt)
    else:
        loop.run(history, ckpt["epoch"] + 1 if ckpt else 1)
    finish(folder, run, ctrl, model, data, device, history, notes)


class _Loop:
    """The epochs of a run: train, evaluate, log, checkpoint."""

    def __init__(self, folder, settings, data, device, ctrl, model, optimizer, schedule,
                 amp) -> None:  # fmt: skip
        self.folder, self.settings, self.data, self.device = folder, settings, data, device
        self.ctrl, self.model, self.optimizer, self.schedule = ctrl, model, optimizer, schedule
        self.net = Autocast(model) if amp else model
        self.pruning = pruning_child(ctrl)
        self.writer = _tensorboard(folder) if settings.get("log") == "tensorboard" else None

    def _pruning_now(self) -> dict[str, Any]:
        if self.pruning is None:
            return {"level": None, "flops_kept": None, "params_kept": None}
        stats = self.pruning.statistics()
        return {"level": float(self.pruning.pruning_level), "flops_kept": stats.flops_kept,
                "params_kept": stats.params_kept}  # fmt: skip

    def _step(self, *_: Any) -> None:
        self.schedule.step()
        self.ctrl.scheduler.step()

    def epoch(self, epoch: int) -> dict[str, Any]:
        self.ctrl.scheduler.epoch_step()
        return self.train(epoch, self.settings["epochs"])

    def train(self, epoch: int, total: int) -> dict[str, Any]:
        """Epoch ``epoch`` of ``total`` with the optimizer and schedule in place, then
        validation; the history row."""
        self.data.shuffle_for(epoch)
        # dropout and drop-path draw from the global generator: seeded by the epoch, a
        # resumed run draws what an uninterrupted one would have
        torch.manual_seed(self.settings["seed"] * 1000003 + 500009 + epoch)
        now = self._pruning_now()
        desc = f"epoch {epoch}/{total}"
        if now["level"] is not None:
            desc += f" level {now['level']:.2f} FLOPs {now['flops_kept']:.2f}"
        lr = self.optimizer.param_groups[0]["lr"]
        result = train_one_epoch(self.net, OnDevice(self.data.train, self.device),
                                 self.optimizer, extra_loss=lambda _m: self.ctrl.loss(),
                                 on_step=self._step, desc=desc)  # fmt: skip
        return {"epoch": epoch, "train_loss": result["loss"],
                "train_accuracy": result["accuracy"], "val_accuracy": self.validate(), **now,
                "lr": lr, "seconds": result["seconds"]}  # fmt: skip

    def validate(self) -> float:
        return evaluate(self.net, OnDevice(self.data.val, self.device))

    def record(self, row: dict[str, Any], history: list[dict[str, Any]], total: int) -> None:
        history.append(row)
        print(_epoch_line(row, total), flush=True)
        self._log(row)

    def run(self, history: list[dict[str, Any]], start: int) -> None:
        for epoch in range(start, self.settings["epochs"] + 1):
            self.record(self.epoch(epoch), history, self.settings["epochs"])
            self._save(epoch, history)
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _log(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "train_accuracy", "val_accuracy", "level", "flops_kept",
                    "params_kept", "lr"):  # fmt: skip
            if row.get(key) is not None:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def _save(self, epoch: int, history: list[dict[str, Any]], **extra: Any) -> None:
        state = {"epoch": epoch, "state_dict": self.model.state_dict(),
                 "compression_state": self.ctrl.get_compression_state(),
                 "optimizer": self.optimizer.state_dict(),
                 "lr_schedule": self.schedule.state_dict(), "history": history,
                 **extra}  # fmt: skip
        atomic_torch_save(self.folder / CHECKPOINT, state)
        _write_json(self.folder / HISTORY, history)


def _epoch_line(row: dict[str, Any], total: int) -> str:
    text = (f"epoch {row['epoch']}/{total}: loss {row['train_loss']:.4f}, train acc "
            f"{row['train_accuracy']:.4f}, val acc {row['val_accuracy']:.4f}")  # fmt: skip
    if row.get("level") is not None:
        text += f", level {row['level']:.3f}, FLOPs kept {row['flops_kept']:.3f}"
    return text + f" ({row['seconds']:.1f}s)"


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunFailed("--log tensorboard needs the tensorboard package, which is not "
                        "installed: pip install tensorboard.") from None
    return SummaryWriter(str(folder / "tensorboard"))
