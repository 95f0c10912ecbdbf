"""The accuracy benchmark's peer plumbing, without the peers' venvs: the runner protocol
(with a fake runner), the refusal of a missing venv, the pins, and the FLOPs counter for
tools that only zero the filters they prune, and the wall-time script's report."""

import dataclasses
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from filterprune import NNCFConfig
from filterprune.testing.cifar_nets import MobileNetV2Small, ResNet20
from filterprune.torch import create_compressed_model, register_default_init_args

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "accuracy"
sys.path.insert(0, str(BENCH))

import contenders  # noqa: E402
import harness  # noqa: E402
import peer_common  # noqa: E402

BUDGET = harness.Budget(1, 2, 1000, 500)

FAKE_RUNNER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {peers!r})
    import dataclasses, peer_common
    args = peer_common.parse_args()
    print("a log line")
    if args.seed == 13:
        sys.exit(3)
    peer_common.emit({{"val": 0.5, "test": 0.25, "finetune_seconds": 1.0,
                      "flops_params": [10, 2], "budget": dataclasses.asdict(args.budget),
                      "argv": [args.contender, args.model, args.target, args.seed,
                               str(args.baseline)], "env": os.environ.get("FAKE_PEER"),
                      "pythonpath": os.environ.get("PYTHONPATH")}})
""")


@pytest.fixture
def fake_peer(tmp_path, monkeypatch):
    """``tp-oneshot`` mapped to a fake runner in a fake venv (this interpreter)."""
    venv = tmp_path / "venvs" / "fake"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".installed").touch()
    runner = tmp_path / "fake_runner.py"
    runner.write_text(FAKE_RUNNER.format(peers=str(BENCH / "peers")))
    monkeypatch.setitem(contenders.PEER_RUNS, "tp-oneshot",
                        ("fake", str(runner), {"FAKE_PEER": "yes"}))  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    return tmp_path / "venvs"


def test_runner_arguments_round_trip():
    argv = peer_common.runner_argv("nncf-global", "mobilenetv2", 0.3, 7, BUDGET, Path("/b.pt"))
    args = peer_common.parse_args(argv)
    assert (args.contender, args.model, args.target, args.seed) == ("nncf-global",
                                                                    "mobilenetv2", 0.3, 7)
    assert args.budget == BUDGET and args.baseline == Path("/b.pt")


def test_run_peer_passes_the_protocol_through_a_fake_runner(fake_peer):
    logged = []
    row = contenders.run_peer("tp-oneshot", "resnet20", 0.5, 1, BUDGET, venvs=fake_peer,
                              log=logged.append)  # fmt: skip
    assert row["flops_params"] == (10, 2) and (row["val"], row["test"]) == (0.5, 0.25)
    assert row["argv"] == ["tp-oneshot", "resnet20", 0.5, 1,
                           str(harness.baseline_path("resnet20", BUDGET))]  # fmt: skip
    assert row["budget"] == dataclasses.asdict(BUDGET)
    assert row["env"] == "yes" and row["pythonpath"] is None  # the peer's own packages only
    assert logged == ["  [tp-oneshot] a log line"]


def test_run_peer_reports_a_runner_that_fails(fake_peer):
    with pytest.raises(contenders.PeerFailed,
                       match=r"tp-oneshot: the runner exited with code 3 and printed no "
                             r"RESULT line; its last output:\na log line"):  # fmt: skip
        contenders.run_peer("tp-oneshot", "resnet20", 0.5, 13, BUDGET, venvs=fake_peer,
                            log=lambda _: None)  # fmt: skip


def test_a_peer_without_its_venv_is_not_measured_and_names_the_setup(tmp_path):
    with pytest.raises(contenders.NotMeasured,
                       match=r"tp-iterative: needs torch-pruning==1\.6\.1 .* not installed; "
                             r"run `bash benchmarks/accuracy/peers/setup\.sh torch-pruning`"):
        contenders.run_peer("tp-iterative", "resnet20", 0.5, 0, BUDGET, venvs=tmp_path)


def test_every_peer_venv_is_pinned_to_the_projects_torch():
    torch_pins = {line for line in (ROOT / "constraints.txt").read_text().splitlines()
                  if line.startswith(("torch==", "torchvision=="))}  # fmt: skip
    assert len(torch_pins) == 2
    venvs = {venv for venv, _, _ in contenders.PEER_RUNS.values()}
    for venv in venvs:
        lines = [line for line in (BENCH / "peers" / f"requirements-{venv}.txt")
                 .read_text().splitlines() if line and not line.startswith("#")]  # fmt: skip
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", line) for line in lines), venv
        assert torch_pins <= set(lines), venv
    for name, (_, runner, _) in contenders.PEER_RUNS.items():
        assert (BENCH / "peers" / runner).exists(), name


def _masked_and_pruned(cls):
    """The same pruned model twice: filters zeroed in place, and physically removed."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    config = register_default_init_args(NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 1, 28, 28]},
        "compression": [{"algorithm": "filter_pruning", "pruning_init": 0.5,
                         "params": {"schedule": "baseline", "pruning_flops_target": 0.5,
                                    "prune_first_conv": True,
                                    "prune_downsample_convs": True}}]}),
        torch.utils.data.DataLoader(data, batch_size=16))  # fmt: skip
    ctrl, _ = create_compressed_model(cls(), config)
    ctrl.scheduler.epoch_step()
    return ctrl.strip(shrink=False), ctrl.strip()


@pytest.mark.parametrize("cls", [ResNet20, MobileNetV2Small])
def test_live_count_of_a_zeroed_model_is_the_count_of_the_cut_one(cls):
    zeroed, cut = _masked_and_pruned(cls)
    probe = torch.randn(16, 1, 28, 28)
    assert torch.allclose(zeroed.eval()(probe), cut.eval()(probe), atol=1e-4)
    flops, params = harness.count_flops(cut)
    assert harness.count_flops(zeroed)[0] > 1.8 * flops  # the plain count sees no pruning
    assert harness.count_live_flops(zeroed, probe) == (flops, params)
    assert harness.count_live_flops(cut, probe) == (flops, params)
    dense = cls()  # nothing dead: ReLU-dead channels of a random net are not pruning
    assert harness.count_live_flops(dense, probe) == harness.count_flops(dense)


def test_live_count_refuses_grouped_convs():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match=r"`groups` must be 1 or in_channels\. "
                                         r"Received: groups=2 \(in_channels=4\)\."):
        harness.count_live_flops(model, torch.randn(2, 4, 8, 8))


def test_dense_finetune_reference_trains_a_copy_and_is_reported(tmp_path):
    torch.manual_seed(0)
    dense = ResNet20()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    data = {k: torch.utils.data.TensorDataset(x, y) for k in ("train", "val", "test")}
    budget = harness.Budget(1, 1, 256, 256)
    row = contenders.run_contender("dense-finetune", "resnet20", dense, 0.0, 0, budget, data)
    assert row["flops_params"] == harness.count_flops(dense)  # nothing pruned
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    assert 0.0 <= row["test"] <= 1.0 and row["finetune_seconds"] > 0
    import report  # noqa: PLC0415  (the benchmark's module, on sys.path above)

    results = tmp_path / "results.jsonl"
    row.pop("flops_params")
    results.write_text(json.dumps({"contender": "dense-finetune", "model": "resnet20",
                                   "target": 0.0, "seed": 0, "budget": "t", "baseline_test": 0.1,
                                   "flops_kept": 1.0, "params_kept": 1.0, **row}) + "\n")
    report.write_report(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| t | resnet20 | 0.0 | dense-finetune |" in text
    assert "dense-finetune" not in text.split("Not measured")[1]


def test_walltime_alternates_and_reports_per_rep_ratios(monkeypatch, capsys):
    import walltime

    order = []
    seconds = {"ours-best": iter([10.0, 12.0, 9.0]), "tp-oneshot": iter([8.0, 13.0, 10.0])}

    def ours(name, args):
        order.append(name)
        return {"finetune_seconds": next(seconds[name]), "flops": 5}

    def peer(name, *_):
        order.append(name)
        return {"finetune_seconds": next(seconds[name]), "flops_params": (6, 1)}

    monkeypatch.setattr(walltime, "splits", lambda budget: {"train": []})
    monkeypatch.setattr(walltime, "baseline", lambda *_: None)
    monkeypatch.setattr(walltime, "_ours_in_child", ours)
    monkeypatch.setattr(walltime, "run_contender", peer)
    walltime.main(["--reps", "3"])
    assert order == ["ours-best", "tp-oneshot"] * 3
    medians, spread = capsys.readouterr().out.strip().splitlines()[-2:]
    # medians 10 and 10, but per rep 1.25, 0.923 and 0.9, whose median is 0.923
    assert medians == ("median ours-best 10.0 s, tp-oneshot 10.0 s: ratio 1.000 (below 1: "
                       "ours faster); per-rep ratios 1.250, 0.923, 0.900, "
                       "median 0.923")  # fmt: skip
    # geometric mean (1.25 * 0.923 * 0.9) ** (1/3) = 1.013; three reps this far apart
    # decide nothing
    assert spread.startswith("geometric mean of the per-rep ratios 1.013, 95% interval 0.")
    assert spread.endswith(": ours level within the reps' spread")


def test_walltime_says_slower_only_when_every_rep_agrees(monkeypatch, capsys):
    import walltime

    seconds = {"ours-best": iter([10.5, 10.4, 10.6, 10.5]), "tp-oneshot": iter([10.0] * 4)}
    monkeypatch.setattr(walltime, "splits", lambda budget: {"train": []})
    monkeypatch.setattr(walltime, "baseline", lambda *_: None)
    monkeypatch.setattr(walltime, "_ours_in_child",
                        lambda name, args: {"finetune_seconds": next(seconds[name]), "flops": 5})
    monkeypatch.setattr(walltime, "run_contender",
                        lambda name, *_: {"finetune_seconds": next(seconds[name]),
                                          "flops_params": (6, 1)})  # fmt: skip
    walltime.main(["--reps", "4"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("geometric mean of the per-rep ratios 1.050, 95% interval 1.0")
    assert last.endswith(": ours slower")


def test_paired_interval_matches_the_t_table_and_gives_verdicts():
    import math

    import paired

    # t quantiles: the table, then the expansion (exact values 2.2010, 2.0860, 2.0003)
    assert paired.t975(1) == 12.706 and paired.t975(4) == 2.776
    for df, exact in ((11, 2.2010), (20, 2.0860), (60, 2.0003)):
        assert abs(paired.t975(df) - exact) < 2e-4
    with pytest.raises(ValueError, match="`df` must be at least 1"):
        paired.t975(0)
    mean, half = paired.interval([1.0, 2.0, 3.0])  # sd 1: half = 4.303 / sqrt(3)
    assert mean == 2.0 and abs(half - 4.303 / math.sqrt(3)) < 1e-12
    assert paired.verdict(mean, half) == "within seed noise"
    assert paired.verdict(3.0, 1.0) == "ahead" and paired.verdict(-3.0, 1.0) == "behind"
    assert math.isnan(paired.interval([0.5])[1])
    assert paired.verdict(0.5, math.nan) == "one seed: no interval"


def test_paired_table_pairs_by_seed_at_one_target():
    import paired

    def row(contender, seed, test, target=0.5, kept=0.5):
        return {"budget": "full", "model": "m", "target": target, "contender": contender,
                "seed": seed, "test": test, "flops_kept": kept}  # fmt: skip

    rows = [row("ours-best", 0, 0.930), row("ours-best", 1, 0.920), row("ours-best", 2, 0.925),
            row("tp", 0, 0.929), row("tp", 1, 0.919), row("tp", 3, 0.999),  # seed 3: unpaired
            row("tp", 0, 0.5, target=0.3, kept=0.7),  # another target and FLOPs: not paired
            row("nncf", 1, 0.921),
            # a peer's step at 0.7 keeps what ours kept at 0.68: paired across targets
            row("ours-best", 0, 0.900, target=0.68, kept=0.3173),
            row("tp", 0, 0.910, target=0.7, kept=0.3174)]  # fmt: skip
    lines = paired.paired_table(rows, "ours-best", ["tp", "nncf", "absent"])
    assert len(lines) == 5  # header, rule, tp and nncf at 0.5, tp at 0.68
    # +0.10 on seeds 0 and 1 each: zero spread, a zero-width interval above zero
    assert lines[2] == "| full | m | 0.5 | tp | 2 | +0.10, +0.10 | +0.10 ± 0.00 | ahead |"
    assert lines[3] == "| full | m | 0.5 | nncf | 1 | -0.10 | -0.10 | one seed: no interval |"
    assert lines[4] == ("| full | m | 0.68 | tp at 0.7 (same FLOPs kept) | 1 | -1.00 | -1.00 "
                        "| one seed: no interval |")  # fmt: skip


def test_report_pairs_the_distilled_refit_with_peers_and_with_the_refit(tmp_path):
    import report  # noqa: PLC0415  (the benchmark's module, on sys.path above)

    def row(contender, seed, test):
        return {"budget": "full", "model": "m", "target": 0.5, "contender": contender,
                "seed": seed, "test": test, "flops_kept": 0.5, "params_kept": 0.5,
                "baseline_test": 0.9, "finetune_seconds": 1.0}  # fmt: skip

    tests = {"ours-best-cl-refit-kd": (0.93, 0.92), "ours-best-cl-refit": (0.92, 0.92),
             "tp-oneshot": (0.91, 0.90)}  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(row(c, s, t)) + "\n"
                               for c, ts in tests.items() for s, t in enumerate(ts)))  # fmt: skip
    report.write_report(results, tmp_path)
    text = (tmp_path / "results.md").read_text()
    kd = text.split("`ours-best-cl-refit-kd` minus the peer:")[1]
    assert "| full | m | 0.5 | tp-oneshot | 2 | +2.00, +2.00 |" in kd
    assert "| full | m | 0.5 | ours-best-cl-refit | 2 | +1.00, +0.00 |" in kd
    assert "`ours-best` minus the peer:" not in text  # no ours-best rows: no empty table


def test_grid_resumes_and_refuses_rows_of_another_baseline(tmp_path, monkeypatch):
    import run  # noqa: PLC0415  (the benchmark's module, on sys.path above)

    monkeypatch.setattr(harness, "CACHE", tmp_path / "cache")
    results = tmp_path / "mine" / "rows.jsonl"  # a folder run.py makes
    argv = ["--check", "--only", "dense-finetune", "--models", "resnet20", "--seeds", "0",
            "--results", str(results)]  # fmt: skip
    run.main(argv)
    (row,) = run.read_rows(results)
    dense = harness.baseline("resnet20", run.CHECK, {})  # the cached one: no data needed
    assert row["baseline_id"] == harness.baseline_id(dense)
    assert (results.parent / "results.md").exists()
    run.main(argv)  # the row is there: nothing runs, nothing is added
    assert run.read_rows(results) == [row]

    # the same row made on another baseline (as if trained on another machine)
    other = {**row, "seed": 7, "baseline_id": "0123456789ab"}
    results.write_text(json.dumps(other) + "\n")
    with pytest.raises(SystemExit, match="another baseline.*--results NEW.jsonl"):
        run.main(argv)
    assert run.read_rows(results) == [other]  # nothing appended


def test_rows_without_a_baseline_id_are_matched_by_its_accuracy():
    import run  # noqa: PLC0415

    legacy = {"model": "resnet20", "budget": "full", "baseline_test": 0.9243}
    run.check_baseline([legacy], Path("r.jsonl"), "resnet20", harness.Budget(), 0.9243, "x")
    run.check_baseline([legacy], Path("r.jsonl"), "mobilenetv2", harness.Budget(), 0.5, "x")
    with pytest.raises(SystemExit, match="test 0.9243.*scores 0.9270"):
        run.check_baseline([legacy], Path("r.jsonl"), "resnet20", harness.Budget(), 0.9270, "x")
    dense = ResNet20()
    ident = harness.baseline_id(dense)
    with torch.no_grad():
        dense.fc.bias[0] += 1e-7
    assert harness.baseline_id(dense) != ident
