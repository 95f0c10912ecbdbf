"""``filterprune analyze``: every MODEL form, the printed analysis, and clear errors."""

import json
import sys
import types

import pytest
import torch
import torchvision

from cli_helpers import TINY, TokenNet, crafted_checkpoint, tiny_cnn
from filterprune.cli import main

SMALL = ["--input-size", "1,3,16,16"]


def test_analyze_prints_groups_reasons_and_levels(capsys, tmp_path):
    out_json, png = tmp_path / "a.json", tmp_path / "plots" / "a.png"
    assert main(["analyze", "torchvision:resnet18", "--input-size", "1,3,64,64",
                 "--json", str(out_json), "--plot", str(png)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "MODEL torchvision:resnet18 (PyTorch), input 1x3x64x64" in text
    assert "What is left whole, and why:" in text
    assert "first convolution (prune_first_conv is off)" in text
    assert "What each level leaves" in text and "of the FLOPs kept" in text
    data = json.loads(out_json.read_text())
    assert [row["level"] for row in data["levels"]] == [round(0.1 * i, 1) for i in range(1, 10)]
    kept = [row["flops_kept"] for row in data["levels"]]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 0.5
    shares = data["group_flops_share"]
    assert set(shares) == {str(g["id"]) for g in data["groups"]}
    assert all(0.0 <= s <= 1.0 for s in shares.values()) and max(shares.values()) > 0.1
    assert abs(sum(data["layer_flops_share"].values()) - 1.0) < 1e-6
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bare_torchvision_names_still_work(capsys):
    assert main(["analyze", "resnet18", "--input", "1,3,32,32"]) == 0
    bare = capsys.readouterr().out
    assert main(["analyze", "torchvision:resnet18", "--input", "1,3,32,32"]) == 0
    assert capsys.readouterr().out.replace("torchvision:", "") == bare



def test_torchvision_segmenters_download_no_backbone(capsys, monkeypatch):
    """``weights=None`` alone still fetched lraspp's ImageNet backbone (URLError offline)."""
    def no_download(*args, **kwargs):
        raise AssertionError("nothing may download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    assert main(["analyze", "torchvision:lraspp_mobilenet_v3_large", "--input-size",
                 "1,3,64,64"]) == 0  # fmt: skip
    assert "MODEL torchvision:lraspp_mobilenet_v3_large" in capsys.readouterr().out

def test_analyze_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_cnn().eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False)
    assert main(["analyze", str(path), "--json", str(tmp_path / "o.json")]) == 0
    text = capsys.readouterr().out
    assert "(ONNX), input 1x3x16x16" in text and "prunable, keeps" in text
    assert main(["analyze", str(path), "--input-size", "1,3,8,8"]) == 2
    assert "dimension 2 is fixed at 16, the shape given has 8" in capsys.readouterr().err


class Crop(torch.nn.Module):
    """Crops by amounts read from sizes: an export with dynamic axes computes the bounds."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.nn.functional.pad(y[:, :, : y.size(2) - 1, : y.size(3) - 2], (1, 1, 0, 1))
        return self.head(torch.relu(self.b(y)))


def test_input_size_sets_an_onnx_files_dynamic_dimensions(tmp_path, capsys):
    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(Crop().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})  # fmt: skip
    flags = ["--prune-first-conv", "--level", "0.5"]
    assert main(["analyze", str(path), *flags]) == 0  # dynamic: read at size 1, and said so
    out = capsys.readouterr().out
    assert "Slice bounds are not constants" in out
    assert "note: input 'x' is ?x3x?x?: its dynamic dimensions are read at 1" in out
    assert "--input-size 1,3,H,W" in out
    assert main(["analyze", str(path), "--input-size", "1,3,32,48", *flags]) == 0
    text = capsys.readouterr().out
    assert "(ONNX), input 1x3x32x48" in text and "Slice" not in text
    assert "/a/Conv" not in text.split("left whole, and why:")[1]
    assert main(["analyze", str(path), "--input-size", "1,4,32,32"]) == 2
    assert "input 'x' is ?x3x?x?: dimension 1 is fixed at 3" in capsys.readouterr().err


def test_level_out_of_range_is_bad_usage(capsys):
    assert main(["analyze", TINY, *SMALL, "--level", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "--level" in err and "expected a number in [0, 1)" in err and "'1.5'" in err


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
    ("cli_helpers:missing", "has no callable 'missing'"),
    ("cli_helpers:not_a_model", "must give a torch.nn.Module. Received: an object of type int"),
    ("cli_helpers:broken_factory", "calling broken_factory() failed with RuntimeError"),
    ("cli_helpers:half_model", "has float16 parameters"),
    ("cli_helpers:bf16_model", "has bfloat16 parameters"),
    ("cli_helpers:meta_model", "on the meta device"),
    ("cli_helpers:TokenNet", "its input dtype does not fit"),
    ("torchvision:resnet5O", "Known torchvision names include"),
])  # fmt: skip
def test_bad_models_get_one_sentence(spec, message, capsys):
    assert main(["analyze", spec, *SMALL]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_dtype_is_named_not_the_sample_size(capsys):
    assert main(["analyze", "cli_helpers:half_model", *SMALL]) == 2
    err = capsys.readouterr().err
    assert "dtype is the problem" in err and "sample_size" not in err
    assert isinstance(TokenNet(), torch.nn.Module)


def test_capture_failure_prints_no_shapeprop_traceback(capfd):
    assert main(["analyze", TINY, "--input-size", "1,3"]) == 2
    captured = capfd.readouterr()
    assert "failed on a zero input of shape" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "ShapeProp" not in captured.err + captured.out


def test_output_paths_are_checked_before_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["analyze", TINY, *SMALL, "--json", str(blocker / "a.json")]) == 2
    assert f"but {blocker} is a file" in capsys.readouterr().err
    assert main(["analyze", TINY, *SMALL, "--plot", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    deep = tmp_path / "new" / "dir" / "a.json"
    assert main(["analyze", TINY, *SMALL, "--json", str(deep)]) == 0
    assert json.loads(deep.read_text())["groups"]
    assert [p.name for p in deep.parent.iterdir()] == ["a.json"]


def test_timm_missing_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["analyze", "timm:resnet18", *SMALL]) == 2
    assert "needs the timm package" in capsys.readouterr().err


def test_timm_models_are_built_by_name(monkeypatch, capsys):
    made = []

    def create_model(name, pretrained=False, **kwargs):
        made.append((name, pretrained, kwargs))
        return torchvision.models.get_model(name, weights=None, **kwargs)

    fake = types.SimpleNamespace(create_model=create_model,
                                 list_models=lambda pattern="*": ["resnet18", "resnet34"])
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert main(["analyze", "timm:resnet18", "--input-size", "1,3,32,32"]) == 0
    assert made == [("resnet18", False, {})]
    assert main(["analyze", "timm:resnet9000", *SMALL]) == 2
    assert "Similar timm names" in capsys.readouterr().err


def test_real_timm_model_if_installed(capsys):
    pytest.importorskip("timm", reason="timm is a test dependency on another branch")
    assert main(["analyze", "timm:resnet18", "--input-size", "1,3,32,32"]) == 0
    assert "prunable, keeps" in capsys.readouterr().out


def test_factory_from_a_file_path(tmp_path, capsys):
    source = tmp_path / "my_models.py"
    source.write_text("from cli_helpers import tiny_cnn\n\ndef build():\n    return tiny_cnn()\n")
    assert main(["analyze", f"{source}:build", *SMALL]) == 0
    assert "prunable, keeps" in capsys.readouterr().out


def test_weights_are_read_weights_only(tmp_path, capsys):
    good = tmp_path / "w.pt"
    torch.save(tiny_cnn().state_dict(), good)
    assert main(["analyze", TINY, *SMALL, "--weights", str(good)]) == 0
    capsys.readouterr()
    marker = tmp_path / "pwned"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    assert main(["analyze", TINY, *SMALL, "--weights", str(evil)]) == 2
    assert "add --trusted" in capsys.readouterr().err
    assert not marker.exists()  # nothing in the file ran


def test_truncated_and_foreign_weights(tmp_path, capsys):
    good = tmp_path / "w.pt"
    torch.save(tiny_cnn().state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert main(["analyze", TINY, *SMALL, "--weights", str(cut)]) == 2
    assert f"--weights {cut} could not be read: it is truncated" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    assert main(["analyze", TINY, *SMALL, "--weights", str(other)]) == 2
    assert "does not fit the model: missing" in capsys.readouterr().err
    assert main(["analyze", TINY, *SMALL, "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "--weights file not found" in capsys.readouterr().err


def test_pickled_model_needs_trusted(tmp_path, capsys):
    path = tmp_path / "full.pt"
    torch.save(tiny_cnn(), path)
    assert main(["analyze", str(path), *SMALL]) == 2
    assert "add --trusted" in capsys.readouterr().err
    assert main(["analyze", str(path), *SMALL, "--trusted"]) == 0
    assert "prunable, keeps" in capsys.readouterr().out
    weights = tmp_path / "sd.pt"
    torch.save(tiny_cnn().state_dict(), weights)
    assert main(["analyze", str(weights), *SMALL]) == 2
    assert "holds a state_dict, not a model" in capsys.readouterr().err


def test_crafted_model_file_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    assert main(["analyze", str(evil), *SMALL]) == 2
    assert main(["report", TINY, "--checkpoint", str(evil)]) == 2
    assert "add --trusted" in capsys.readouterr().err
    assert main(["prune", TINY, *SMALL, "--weights", str(evil), "-o", str(tmp_path / "o.pt")]) == 2
    assert "add --trusted" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "o.pt").exists()


def test_the_level_sweep_keeps_its_keys_where_a_level_cannot_be_reached():
    """Unreachable rows of ``analyze --json`` lacked ``filters_kept`` and ``filters``."""
    from types import SimpleNamespace

    from filterprune.cli_analyze import sweep
    from filterprune.errors import ConfigError

    class Ctrl:
        def set_pruning_level(self, level):
            if level > 0.5:
                raise ConfigError("cannot be reached")

        def statistics(self):
            return SimpleNamespace(flops_kept=0.5, params_kept=0.5, current_filters=8,
                                   full_filters=16)  # fmt: skip

    rows = sweep(Ctrl())
    assert rows[-1]["flops_kept"] is None and rows[0]["filters_kept"] == 8
    assert all(row.keys() == rows[0].keys() for row in rows)


@pytest.mark.parametrize("quantized", [False, True])
def test_weights_of_a_compressed_model_are_read_with_their_masks(tmp_path, capsys, quantized):
    """The README's checkpoint, ``{"state_dict": model.state_dict(), ...}`` of a compressed
    model, was refused for its ``_mask`` keys; read raw, its pruned filters would be back."""
    from filterprune.cli_models import load_weights
    from filterprune.testing.zoo import nondegenerate
    from filterprune.torch import create_compressed_model, register_default_init_args
    from filterprune.torch.masks import masked_param

    algos = [{"algorithm": "filter_pruning", "pruning_init": 0.5,
              "params": {"prune_first_conv": True, "filters_multiple_of": 1}}]  # fmt: skip
    if quantized:
        algos.append({"algorithm": "quantization"})
    config = {"input_info": {"sample_size": [1, 3, 16, 16]}, "compression": algos}
    data = [(torch.randn(4, 3, 16, 16), torch.zeros(4)) for _ in range(2)]
    ctrl, model = create_compressed_model(nondegenerate(tiny_cnn()),
                                          register_default_init_args(config, data))  # fmt: skip
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(),
                "compression_state": ctrl.get_compression_state()}, path)  # fmt: skip
    fresh = tiny_cnn().eval()
    load_weights(fresh, str(path))
    said = capsys.readouterr().out
    assert "masks applied" in said and ("quantizer ranges left out" in said) == quantized
    mine = dict(fresh.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):  # what the masks read
            torch.testing.assert_close(mine[name].weight, masked_param(module, "weight"))
    if not quantized:  # (a quantized model's own output is rounded)
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    assert main(["analyze", TINY, *SMALL, "--weights", str(path)]) == 0


HELD_TIED = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # follows the stem's channels
        self.c3 = nn.Conv2d(8, 16, 3, padding=1)
        self.v = nn.Parameter(torch.randn(1, 16, 1, 1))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = self.c3(torch.relu(self.dw(self.stem(x))))
        y = y + torch.fft.fft(self.v, dim=1).real  # ties c3's 16 channels into one unit
        return self.fc(y.mean((2, 3)))
'''


def test_the_table_counts_filters_and_names_the_layers_that_follow(tmp_path, capsys):
    """The "filters" column showed a group's channel units (1 for c3's 16 filters tied by
    an FFT), and a depthwise conv held with the first conv was in no row."""
    (tmp_path / "held_tied.py").write_text(HELD_TIED)
    out = tmp_path / "a.json"
    assert main(["analyze", f"{tmp_path / 'held_tied.py'}:Net", *SMALL, "--json",
                 str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if "left whole  " in line]
    assert rows[0][:3] == ["0", "8", "2"] and rows[0][-2:] == ["stem,", "dw"]
    assert rows[1][:3] == ["1", "16", "1"] and rows[1][-1] == "c3"
    assert "group 0 (stem, dw, " in text
    groups = {g["producers"][0]: g for g in json.loads(out.read_text())["groups"]}
    assert (groups["c3"]["size"], groups["c3"]["filters"]) == (1, 16)
    assert groups["stem"]["followers"] == ["dw"]


def test_a_model_failing_on_the_default_size_is_told_to_give_one(capsys):
    """The error named `input_info`, which the user never gave: analyze's own default."""
    assert main(["analyze", "filterprune.examples._training:SmallCNN"]) == 2
    err = capsys.readouterr().err
    assert "No input size was given, so analyze tried its default 1,3,224,224" in err
    assert main(["analyze", "filterprune.examples._training:SmallCNN",
                 "--input-size", "1,1,28,28"]) == 0  # fmt: skip
