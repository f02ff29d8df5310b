"""Every registered method: compress a tiny model -> pack -> load -> the same outputs (the day it lands)."""
import pytest
import torch

import deepshrink
from deepshrink.nn import Packable
from deepshrink.packing import inspect, load, save

# ResNet-20 on 8x8 inputs, stage 1 only (6 convs of 16 channels): ResNet-style blocks for FBS, Hessians
# small enough for exact L-OBS, and every method's layer swap, gates and quantizers exercised.
RECIPE_LAYERS = [{"pattern": "layer2.*", "skip": True}, {"pattern": "layer3.*", "skip": True}]
TINY = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "train.log_every=1000"]


@pytest.mark.parametrize("method", deepshrink.list_methods())
def test_method_output_survives_pack_and_load(method, tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)]
    torch.manual_seed(0)
    model = deepshrink.create_model("resnet20", num_classes=4)
    result = deepshrink.compress(model, {"method": method, "layers": RECIPE_LAYERS}, train_data=data,
                                 calib_data=data, overrides=TINY)
    compressed = result.model.eval()
    assert any(isinstance(m, Packable) for m in compressed.modules()), f"{method} left nothing to pack"
    report = save(compressed, tmp_path / "m.dsz")
    loaded = load(tmp_path / "m.dsz")
    assert [type(m) for m in loaded.modules()] == [type(m) for m in compressed.modules()]
    with torch.no_grad():
        for images, _ in data:
            assert (loaded(images) - compressed(images)).abs().max().item() <= 1e-5
    assert sum(row["bytes"] for row in inspect(tmp_path / "m.dsz")["layers"]) == report["totals"]["file_bytes"]
