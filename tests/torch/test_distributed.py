"""distributed(): under torch.distributed every rank ends up with rank 0's masks, and
with rank 0's weights after a refit; a refit that fails on one rank fails on all.

Each worker runs its body inside ``_in_group``: the body's results are on disk before the
ranks leave the group together, and the worker then exits at once. CI once saw rank 0
abort ("terminate called without an active exception") while the ranks shut down; gloo
leaves threads running after ``destroy_process_group``, and the interpreter's teardown
is where such threads can abort a process.
"""

import contextlib
import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _in_group(rank: int, world: int, port: int):
    """Join the group; after the body, wait for every rank, leave, and exit the process.

    The exit skips the interpreter's teardown, where threads the group left behind can
    abort the process; a body that raises leaves as usual, so spawn reports its error.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left waiting in a collective fails after the timeout instead of hanging CI
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))  # fmt: skip
    try:
        yield
        dist.barrier()  # no rank leaves while another is still in a collective
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch_helpers import SmallNet, make_config

    from filterprune.torch import create_compressed_model

    with _in_group(rank, world, port):
        torch.manual_seed(rank)  # different weights per rank: local masks would differ
        config = make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=2,
                             prune_first_conv=True)  # fmt: skip
        ctrl, model = create_compressed_model(SmallNet(), config)
        ctrl.distributed()
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # syncs weights from rank 0
        with torch.no_grad():  # let the ranks drift apart, so local masks would differ
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ctrl.scheduler.epoch_step()
        ctrl.scheduler.epoch_step()
        masks = {k: v for k, v in model.state_dict().items() if k.endswith("_mask")}
        torch.save(masks, os.path.join(out_dir, f"rank{rank}.pt"))
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()


def test_masks_identical_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    m0, m1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert m0.keys() == m1.keys()
    assert any((v == 0).any() for v in m0.values())
    for k in m0:
        assert torch.equal(m0[k], m1[k]), k


def _refit_ctrl(rank: int):
    from torch_helpers import SmallNet, make_config

    from filterprune.torch import create_compressed_model, register_default_init_args

    torch.manual_seed(0)
    config = make_config(pruning_init=0.0, pruning_target=0.5, schedule="baseline",
                         prune_first_conv=True, reconstruction_after_mask_change=True,
                         num_reconstruction_samples=8)  # fmt: skip
    data = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
    config = register_default_init_args(config, [(data, None)])  # each rank its own
    ctrl, model = create_compressed_model(SmallNet(), config)
    ctrl.distributed()
    return ctrl, model


def _refit_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with _in_group(rank, world, port):
        ctrl, model = _refit_ctrl(rank)
        torch.nn.parallel.DistributedDataParallel(model)
        ctrl.scheduler.epoch_step()  # cut and refit on the rank's batch, then rank 0's weights
        torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


def test_refit_weights_identical_on_every_rank(tmp_path):
    mp.spawn(_refit_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    fresh = make_small_state()
    assert any(not torch.equal(s0[k], fresh[k]) for k in fresh)  # the refit changed weights
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def _failing_refit_worker(rank: int, world: int, port: int, out_dir: str, step: str) -> None:
    import filterprune.torch.controller as controller
    from filterprune.core.config import ConfigError

    with _in_group(rank, world, port):
        ctrl, model = _refit_ctrl(rank)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if rank == 1:
            def broken(*args, **kwargs):
                raise ConfigError("this rank's data failed")
            setattr(controller, step, broken)
        try:
            ctrl.scheduler.epoch_step()
            outcome = "no error"
        except ConfigError as err:
            outcome = str(err)
        except Exception as err:  # e.g. a collective that timed out
            outcome = f"{type(err).__name__}: {err}"
        after = model.state_dict()
        torch.save({"outcome": outcome, "same": all(torch.equal(before[k], after[k])
                                                    for k in before)},  # fmt: skip
                   os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("step", ["record", "reconstruct"])
def test_refit_failing_on_one_rank_fails_on_every_rank(tmp_path, step):
    mp.spawn(_failing_refit_worker, args=(2, _free_port(), str(tmp_path), step), nprocs=2,
             join=True)  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r1["outcome"] == "this rank's data failed"
    assert "failed on rank(s) [1]" in r0["outcome"], r0["outcome"]
    assert r0["same"] and r1["same"]  # weights and masks as before, on both ranks


def make_small_state() -> dict:
    from torch_helpers import SmallNet

    torch.manual_seed(0)
    return SmallNet().state_dict()


def _created_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Each rank starts from its own weights and initialises quantizer ranges on its own
    data (rank 0's non-negative): distributed() must leave every rank with rank 0's."""
    from torch_helpers import SmallNet

    from filterprune import NNCFConfig
    from filterprune.torch import create_compressed_model, register_default_init_args

    with _in_group(rank, world, port):
        torch.manual_seed(rank)
        data = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
        data = data.abs() if rank == 0 else data
        config = NNCFConfig.from_dict({
            "input_info": {"sample_size": [1, 3, 32, 32]},
            "compression": [{"algorithm": "filter_pruning", "pruning_init": 0.5,
                             "params": {"prune_first_conv": True}},
                            {"algorithm": "quantization",
                             "initializer": {"range": {"num_init_samples": 8}}}]})  # fmt: skip
        config = register_default_init_args(config, [(data, None)])
        ctrl, model = create_compressed_model(SmallNet(), config)
        ctrl.distributed()
        torch.nn.parallel.DistributedDataParallel(model)  # copies rank 0's weights and buffers
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        model.eval()
        with torch.no_grad():
            out, stripped = model(x), ctrl.strip().eval()(x)
        torch.save({"state": ctrl.get_compression_state(), "out": out, "stripped": stripped},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip


def test_distributed_takes_rank0s_masks_and_quantizer_ranges_at_once(tmp_path):
    """Before: rank 1 kept its own plan until the first epoch_step (its strip was 0.25
    relative off its masked model), and its own integer range under rank 0's scale (its
    outputs 10% off rank 0's on the same input)."""
    mp.spawn(_created_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["state"] == r1["state"]
    assert torch.equal(r0["out"], r1["out"])
    for r in (r0, r1):
        assert (r["out"] - r["stripped"]).abs().max() <= 1e-4 * r["out"].abs().max()


def _taylor_sum_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import numpy as np

    from filterprune.torch.signals import _summed_over_ranks

    with _in_group(rank, world, port):
        scores = {"a": np.full((3, 1), rank + 1.0), "b": None if rank else np.ones((2, 1)),
                  "c": None}  # fmt: skip
        out = _summed_over_ranks(scores, {"a": 3, "b": 2, "c": 1}, torch.device("cpu"))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def test_taylor_totals_are_summed_over_ranks(tmp_path):
    """Ranking read rank 0's gradients only (each rank's hooks see its own data)."""
    import numpy as np

    mp.spawn(_taylor_sum_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        np.testing.assert_array_equal(out["a"], np.full((3, 1), 3.0))
        np.testing.assert_array_equal(out["b"], np.ones((2, 1)))  # rank 1 had none yet
        assert out["c"] is None


def _shrink_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import logging

    from torch_helpers import SmallNet, make_config

    from filterprune.torch import create_compressed_model

    with _in_group(rank, world, port):
        torch.manual_seed(0)
        config = make_config(pruning_init=0.5, schedule="baseline", prune_first_conv=True,
                             shrink_when_frozen=True)  # fmt: skip
        ctrl, model = create_compressed_model(SmallNet(), config)
        ctrl.distributed()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        ctrl.register_optimizer(optimizer)
        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("filterprune").addHandler(handler)
        g = torch.Generator().manual_seed(rank)  # each rank its own batches
        for _ in range(2):
            ctrl.scheduler.epoch_step()  # the baseline schedule freezes at once
            optimizer.zero_grad()
            ddp(torch.randn(2, 3, 32, 32, generator=g)).square().mean().backward()
            optimizer.step()
        weights = {n: p.detach() for n, p in model.named_parameters()}  # (BN's statistics
        # are each rank's own)
        torch.save({"shrunk": ctrl.shrunk, "said": said, "weights": weights},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip


def test_shrink_when_frozen_under_ddp_leaves_the_model_masked(tmp_path):
    """Cut in place, the model's new parameters were not DDP's: its next forward failed
    (or, with find_unused_parameters, the ranks drifted apart: 0.13 after two epochs)."""
    mp.spawn(_shrink_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert not r0["shrunk"] and not r1["shrunk"]
    assert any("DistributedDataParallel" in m for m in r0["said"])
    for k in r0["weights"]:
        torch.testing.assert_close(r0["weights"][k], r1["weights"][k], rtol=0, atol=0)


def _accuracy_aware_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch import nn

    from filterprune import NNCFConfig
    from filterprune.torch import create_accuracy_aware_training_loop, create_compressed_model

    with _in_group(rank, world, port):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(1024, 4))  # fmt: skip
        config = NNCFConfig.from_dict({
            "input_info": {"sample_size": [1, 1, 8, 8]},
            "compression": {"algorithm": "filter_pruning", "pruning_init": 0.1,
                            "params": {"prune_first_conv": True, "filters_multiple_of": 1}},
            "accuracy_aware_training": {"mode": "adaptive_compression_level", "params": {
                "maximal_absolute_accuracy_degradation": 0.05,
                "initial_training_phase_epochs": 1, "patience_epochs": 1,
                "maximal_total_epochs": 6}}})  # fmt: skip
        ctrl, model = create_compressed_model(net, config)
        ctrl.distributed()
        ddp = nn.parallel.DistributedDataParallel(model)

        def train(ctrl, model, epoch, optimizer, lr_scheduler):
            optimizer.zero_grad()
            ddp(torch.randn(4, 1, 8, 8)).square().mean().backward()
            optimizer.step()

        def validate(model, epoch):  # each rank its own shard: rank 1's drops sooner
            return 0.9 if ctrl.pruning_level <= (0.6 if rank == 0 else 0.35) else 0.5

        loop = create_accuracy_aware_training_loop(config, ctrl)
        loop.run(model, train_epoch_fn=train, validate_fn=validate,
                 configure_optimizers_fn=lambda: (torch.optim.SGD(model.parameters(), 0.01),
                                                  None))  # fmt: skip
        torch.save({"best": loop.best_level, "level": ctrl.pruning_level},
                   os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip


def test_the_accuracy_aware_loop_goes_by_rank0s_accuracy(tmp_path):
    """A validate_fn returning each rank's own accuracy made the ranks search apart: the
    collectives of their level changes met, and gloo aborted the job."""
    mp.spawn(_accuracy_aware_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
             join=True)  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0 == r1 and r0["best"] > 0.35


def _forgot_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import logging

    from torch_helpers import SmallNet, make_config

    from filterprune.torch import create_compressed_model

    with _in_group(rank, world, port):
        said = []
        handler = logging.Handler()
        handler.emit = lambda record: said.append(record.getMessage())
        logging.getLogger("filterprune").addHandler(handler)
        config = make_config(pruning_init=0.0, pruning_target=0.5, pruning_steps=2,
                             prune_first_conv=True)  # fmt: skip
        for call in (True, False):
            torch.manual_seed(0)
            ctrl, _ = create_compressed_model(SmallNet(), config)
            if call:
                ctrl.distributed()
            for _ in range(3):
                ctrl.scheduler.epoch_step()
            said.append(f"-- distributed() called: {call}")
        torch.save(said, os.path.join(out_dir, f"rank{rank}.pt"))


def test_masks_changing_without_distributed_are_warned_about(tmp_path):
    """Without ``distributed()`` each rank planned its own masks under rank 0's mask
    buffers (DDP copies them), and rank 1's strip was 0.28 off its model: nothing said."""
    mp.spawn(_forgot_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        said = torch.load(tmp_path / f"rank{r}.pt")
        called = said[: said.index("-- distributed() called: True")]
        forgot = said[len(called) + 1 : said.index("-- distributed() called: False")]
        assert not any("ctrl.distributed() was not called" in s for s in called)
        assert sum("process group of 2 ranks, but ctrl.distributed() was not called" in s
                   for s in forgot) == 1  # fmt: skip

