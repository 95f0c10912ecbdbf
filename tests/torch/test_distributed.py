"""distributed(): under torch.distributed every rank ends up with rank 0's masks."""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch_helpers import SmallNet, make_config

    from filterprune.torch import create_compressed_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
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
    finally:
        dist.destroy_process_group()


def test_masks_identical_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    m0, m1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert m0.keys() == m1.keys()
    assert any((v == 0).any() for v in m0.values())
    for k in m0:
        assert torch.equal(m0[k], m1[k]), k
