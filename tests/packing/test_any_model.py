"""A model deepshrink never saw: packed with its traced graph, reloaded where its code does not exist."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.cli import main
from deepshrink.errors import PackFormatError, UserError
from deepshrink.packing.format import read_container, to_bytes
from deepshrink.registry import MODELS


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Linear(channels, channels // reduction)
        self.expand = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        weights = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3))))))  # (B, C)
        return x * weights.view(x.size(0), -1, 1, 1)  # (B, C, 1, 1) over (B, C, H, W)


class UserNet(nn.Module):
    """Depthwise and grouped convs, squeeze-excitation, a residual add, a learned scale, a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 32, 1, groups=4)
        self.excite = SqueezeExcite(32)
        self.scale = nn.Parameter(torch.full((1, 32, 1, 1), 0.5))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + F.silu(self.bn(self.depthwise(x)))
        x = self.excite(self.grouped(x)) * self.scale
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DataDependent(UserNet):
    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return super().forward(x)


def _batches(n: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(n)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """{method: (compressed model, .dsz path)}: L-DNQ (weights only) and LSQ W4A4 (input quantizers nested
    in the compressed layers)."""
    folder = tmp_path_factory.mktemp("any_model")
    torch.manual_seed(0)
    results = {"ldnq": deepshrink.compress(UserNet().eval(), "ldnq", calib_data=_batches()),
               "lsq": deepshrink.compress(UserNet().eval(), "lsq", train_data=_batches(1),
                                          overrides=["train.epochs=1"])}
    out = {}
    for method, result in results.items():
        deepshrink.pack(result.model, folder / f"{method}.dsz")
        out[method] = result.model, folder / f"{method}.dsz"
    return out


def test_the_file_records_a_graph_and_the_compressed_layers(packed):
    meta, _, _ = read_container(packed["lsq"][1])
    assert set(meta["arch"]) == {"graph"}
    assert meta["arch"]["graph"]["modules"]["depthwise"] == {"type": "packable"}
    assert meta["arch"]["graph"]["modules"]["stem.0"]["type"] == "Conv2d"
    assert {m["path"]: m["type"] for m in meta["modules"]} == {
        **{p: "compressed_conv2d" for p in ("depthwise", "grouped")},
        **{p: "compressed_linear" for p in ("excite.reduce", "excite.expand")},
        **{f"{p}.input_quant": "lsq_activation" for p in ("depthwise", "grouped", "excite.reduce", "excite.expand")}}


def test_a_fresh_process_that_never_saw_the_code_gives_the_same_outputs(packed, tmp_path):
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.save(images, tmp_path / "images.pt")
    script = textwrap.dedent(f"""
        import sys, torch, deepshrink
        torch.set_num_threads({torch.get_num_threads()})  # a kernel's sum order may depend on the thread count
        images = torch.load({str(tmp_path / 'images.pt')!r})
        outputs = {{}}
        for method in ("ldnq", "lsq"):
            model = deepshrink.load({str(packed['ldnq'][1].parent)!r} + f"/{{method}}.dsz")
            with torch.no_grad():
                outputs[method] = model(images)
        assert not [name for name in sys.modules if "test_any_model" in name or name.startswith("tests")]
        torch.save(outputs, {str(tmp_path / 'outputs.pt')!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outputs = torch.load(tmp_path / "outputs.pt")
    for method, (model, _) in packed.items():
        with torch.no_grad():
            assert torch.equal(outputs[method], model(images)), method


def test_the_loaded_model_keeps_its_codes_resident(packed):
    loaded = deepshrink.load(packed["ldnq"][1])
    assert type(loaded).__name__ == "UserNet"
    assert loaded.depthwise.is_resident and "depthwise.weight" not in loaded.state_dict()


def _hostile(packed, tmp_path, mutate) -> str:
    meta, blobs, _ = read_container(packed["ldnq"][1])
    mutate(meta["arch"]["graph"])
    path = tmp_path / "hostile.dsz"
    path.write_bytes(to_bytes(meta, blobs))
    return path


def _first(graph, op):
    return next(node for node in graph["nodes"] if node["op"] == op)


def _call(target):
    def mutate(graph):
        node = _first(graph, "call_function")
        node["target"], node["args"] = target, [f"touch {MARKER}"]
    return mutate


MARKER = "deepshrink-hostile-ran"
HOSTILE = {
    "os.system": _call("os.system"),
    "builtins.eval": _call("builtins.eval"),
    "'__reduce_ex__'": lambda g: _first(g, "call_method").update(target="__reduce_ex__"),
    "'__class__'": lambda g: _first(g, "call_function").update(target="builtins.getattr",
                                                                args=[{"node": "x"}, "__class__"]),
    "'subprocess.Popen'": lambda g: g["modules"]["head"].update(type="subprocess.Popen"),
    "input name": lambda g: _first(g, "placeholder").update(target=f"x=__import__('os').system('touch {MARKER}')"),
    "identifiers": lambda g: _first(g, "call_method").update(kwargs={f"x=__import__('os').system('{MARKER}')": 1}),
    "'head.forward.__globals__'": lambda g: _first(g, "get_attr").update(target="head.forward.__globals__"),
    "'forward.__globals__'": lambda g: g["tensors"].update({"forward.__globals__": g["tensors"]["scale"]}),
}


@pytest.mark.parametrize("named", list(HOSTILE))
def test_a_graph_naming_anything_outside_the_allow_lists_is_refused_and_nothing_runs(named, packed, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _hostile(packed, tmp_path, HOSTILE[named])
    with pytest.raises(PackFormatError, match=named.replace("(", r"\(")):
        deepshrink.load(path)
    assert not (tmp_path / MARKER).exists()


def test_an_untraceable_model_is_refused_at_pack_time_naming_the_line_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(UserError) as refused:
        deepshrink.pack(DataDependent().eval(), tmp_path / "m.dsz")
    message = str(refused.value)
    assert "DataDependent" in message and "`if x.sum() > 0:`" in message and "register_model" in message
    assert len(message.splitlines()) == 1 and not list(tmp_path.iterdir())
    # the fix: a registered constructor; the file records its name and loads where it is registered
    monkeypatch.setitem(MODELS._entries, "data_dependent_test_net", DataDependent)
    model = deepshrink.create_model("data_dependent_test_net").eval()
    deepshrink.pack(model, tmp_path / "m.dsz")
    assert read_container(tmp_path / "m.dsz")[0]["arch"] == {"name": "data_dependent_test_net", "kwargs": {}}
    images = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(deepshrink.load(tmp_path / "m.dsz")(images), model(images))
    monkeypatch.delitem(MODELS._entries, "data_dependent_test_net")
    with pytest.raises(PackFormatError, match="not a registered model in this process; import the code"):
        deepshrink.load(tmp_path / "m.dsz")


def test_a_function_outside_the_allow_list_is_refused_at_pack_time(tmp_path):
    class Cumulative(UserNet):
        def forward(self, x):
            return torch.cumprod(super().forward(x), 1)

    with pytest.raises(UserError, match=r"calls torch.cumprod \(.*test_any_model.py.*register_model"):
        deepshrink.pack(Cumulative().eval(), tmp_path / "m.dsz")


def test_the_cli_evaluates_inspects_and_exports_the_file(packed, tmp_path, capsys):
    path = packed["ldnq"][1]
    assert main(["eval", str(path), "--data", "digits", "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 360 and 0 <= metrics["top1"] <= 100
    assert main(["inspect", str(path)]) == 0
    table = capsys.readouterr().out
    assert "depthwise" in table and "excite.reduce" in table
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx"), "--input-shape", "1,8,8"]) == 0
    assert json.loads(capsys.readouterr().out)["integer_layers"] == 4


def test_a_layer_its_constructor_cannot_rebuild_is_refused_at_pack_time(tmp_path):
    model = UserNet().eval()
    model.head.weight = nn.Parameter(torch.zeros(10, 64))  # no longer what Linear(32, 10) builds
    with pytest.raises(UserError, match=r"head.weight has shape \[10, 64\].*\[10, 32\]"):
        deepshrink.pack(model, tmp_path / "m.dsz")
