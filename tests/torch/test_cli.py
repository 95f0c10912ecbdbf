"""filterprune analyze | prune | report on a small model."""

import json

import pytest
import torch
from torch_helpers import SmallNet, make_config

from filterprune.cli import main
from filterprune.torch import create_compressed_model, resize_to_state_dict

MODEL = "torch_helpers:SmallNet"


def test_analyze_prints_groups_reasons_and_estimate(capsys, tmp_path):
    out_json = tmp_path / "groups.json"
    assert main(["analyze", MODEL, "--input", "1,3,32,32", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "first convolution (prune_first_conv is off)" in text
    assert "of the FLOPs kept" in text
    data = json.loads(out_json.read_text())
    assert {tuple(g["producers"]) for g in data["groups"]} >= {("fc2",), ("b", "se2")}


def test_prune_writes_a_shrunk_state_dict_and_onnx(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "dense.pt"
    torch.save(SmallNet().state_dict(), weights)
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(dict(make_config(prune_first_conv=True))))
    out = tmp_path / "pruned.pt"
    args = ["prune", MODEL, "--config", str(config), "--weights", str(weights), "-o", str(out),
            "--onnx", str(tmp_path / "pruned.onnx")]  # fmt: skip
    assert main(args) == 0
    state = torch.load(out)
    assert state["b.weight"].shape[0] < 24
    small = resize_to_state_dict(SmallNet(), state).eval()
    assert small(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert (tmp_path / "pruned.onnx").stat().st_size > 0
    capsys.readouterr()
    assert main([*args, "--level", "0.25"]) == 0
    assert "pruning level     : 0.250 (target 0.500)" in capsys.readouterr().out


def test_report_prints_statistics_and_plots(tmp_path, capsys):
    ctrl, model = create_compressed_model(SmallNet(), make_config(prune_first_conv=True))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(),
                "compression_state": ctrl.get_compression_state()}, ckpt)  # fmt: skip
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(dict(make_config(prune_first_conv=True))))
    png = tmp_path / "layers.png"
    args = ["report", MODEL, "--config", str(config), "--checkpoint", str(ckpt), "--plot", str(png)]
    assert main(args) == 0
    assert "Filter pruning statistics" in capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_checkpoint_that_does_not_fit_says_what_to_give(tmp_path, capsys):
    """Without --config the state was refused with "Set pruning_init=0.1" (no file to set it
    in); a run's checkpoint with a resized classifier failed with a bare RuntimeError."""
    ctrl, model = create_compressed_model(SmallNet(), make_config(pruning_init=0.1))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(),
                "compression_state": ctrl.get_compression_state()}, ckpt)  # fmt: skip
    assert main(["report", MODEL, "--checkpoint", str(ckpt), "--input-size", "1,3,32,32"]) == 2
    assert "Give that config with --config" in capsys.readouterr().err
    state = dict(model.state_dict(), **{"fc2.weight": torch.zeros(3, 64)})
    torch.save({"state_dict": state, "compression_state": ctrl.get_compression_state()}, ckpt)
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(dict(make_config(pruning_init=0.1))))
    assert main(["report", MODEL, "--config", str(config), "--checkpoint", str(ckpt)]) == 2
    assert "report the run folder: filterprune report RUN_DIR" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["analyze", "resnet5O"]) == 2
    assert "torchvision model name or 'module:factory'" in capsys.readouterr().err


def test_analyze_and_prune_agree_on_groups_and_flops(tmp_path, capsys):
    # scopes, importance, ranking and rounding all come from the config file in both
    cfg = dict(make_config(prune_first_conv=True, pruning_init=0.4))
    cfg["compression"]["params"].update(filter_importance="L1", all_weights=True,
                                        filters_multiple_of=4, pruning_target=0.4)
    cfg["ignored_scopes"] = ["b"]
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    weights = tmp_path / "dense.pt"
    torch.save(SmallNet().state_dict(), weights)
    out_json = tmp_path / "analysis.json"
    assert main(["analyze", MODEL, "--config", str(config), "--weights", str(weights),
                 "--json", str(out_json)]) == 0  # fmt: skip
    analysis = json.loads(out_json.read_text())
    assert main(["prune", MODEL, "--config", str(config), "--weights", str(weights),
                 "-o", str(tmp_path / "pruned.pt")]) == 0  # fmt: skip
    model = SmallNet()
    model.load_state_dict(torch.load(weights))
    ctrl, _ = create_compressed_model(model.eval(), cfg)
    ctrl.set_pruning_level(0.4)
    stats = ctrl.statistics()
    followers = ctrl.analysis.followers()
    groups = [{"id": g.id, "size": g.size, "filters": ctrl.analysis.filters(g), "width": g.width,
               "producers": g.producers, "followers": followers.get(g.id, []),
               "reason": g.reason} for g in ctrl.analysis.groups]  # fmt: skip
    assert analysis["groups"] == groups
    assert any(g["reason"] and "ignored_scopes" in g["reason"] for g in groups)
    assert analysis["statistics"]["current_flops"] == stats.current_flops
    assert analysis["plan"] == ctrl.plan.to_dict(ctrl.analysis)


def test_one_shot_with_quantization_says_to_fine_tune(tmp_path, capsys):
    config = tmp_path / "q.json"
    config.write_text(json.dumps({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [
        {"algorithm": "filter_pruning"}, {"algorithm": "quantization"}]}))
    out = tmp_path / "pruned.pt"
    assert main(["prune", MODEL, "--config", str(config), "-o", str(out)]) == 2
    assert "one-shot pruning (-o, no training) cannot quantize" in capsys.readouterr().err
    assert not out.exists()


def test_report_of_a_quantized_checkpoint_counts_the_weight_ranges(tmp_path, capsys):
    """Weight quantizers take their ranges from the weights in a forward: without one,
    a trained checkpoint's were said not to be set."""
    config = dict(make_config(prune_first_conv=True))
    config["compression"] = [config["compression"], {
        "algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}]
    ctrl, model = create_compressed_model(SmallNet(), config)
    model(torch.randn(2, 3, 32, 32))  # a training step's forward sets every range
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(),
                "compression_state": ctrl.get_compression_state()}, ckpt)  # fmt: skip
    path = tmp_path / "q.json"
    path.write_text(json.dumps(config))
    assert main(["report", MODEL, "--config", str(path), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    total = len(ctrl.get("quantization").quantizers)
    assert f"{total} of {total}" in out and "not initialised" not in out


def test_a_pruned_state_dict_is_read_into_the_architecture(tmp_path, capsys):
    """`prune -o pruned.pt` could not be given back as --weights: 'other shape'."""
    torch.manual_seed(0)
    config = tmp_path / "prune.json"
    config.write_text(json.dumps(dict(make_config(prune_first_conv=True))))
    out = tmp_path / "pruned.pt"
    assert main(["prune", MODEL, "--config", str(config), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["analyze", MODEL, "--input", "1,3,32,32", "--weights", str(out)]) == 0
    text = capsys.readouterr().out
    assert "read as a pruned model" in text
    small = torch.load(out)["b.weight"].shape[0]
    row = next(line for line in text.splitlines() if line.endswith("b, se2 (+1)"))  # +dw
    assert small < 24 and row.split()[1] == str(small)  # the group's filters: the pruned


def test_analyze_names_a_layer_in_no_group_and_why(capsys, tmp_path):
    """A conv whose weight is standardised in forward is no group's member: analyze said
    nothing of it, though statistics listed it."""
    (tmp_path / "wsnet.py").write_text(
        "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
        "class WSConv(nn.Conv2d):\n"
        "    def forward(self, x):\n"
        "        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))\n"
        "        return F.conv2d(x, w, self.bias, self.stride, self.padding)\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), WSConv(8, 8, 3), nn.ReLU(),\n"
        "                         nn.Conv2d(8, 4, 1))\n")  # fmt: skip
    assert main(["analyze", f"{tmp_path / 'wsnet.py'}:build", "--input", "1,3,16,16"]) == 0
    text = capsys.readouterr().out
    assert "layer 2 (" in text and "reads a weight computed in forward" in text


def test_an_onnx_file_given_where_a_torch_model_is_needed_points_at_convert():
    """`report m.onnx --checkpoint ...` said "is a onnx file", with no way forward."""
    from filterprune.cli_common import UsageError
    from filterprune.cli_models import ModelSpec, load_torch_model

    with pytest.raises(UsageError, match=r"m.onnx is an ONNX file; .*`filterprune convert "
                                         r"m.onnx -o OUT --report`"):
        load_torch_model(ModelSpec("onnx", "m.onnx", "m.onnx"))
