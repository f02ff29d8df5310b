"""Cached block inputs (layerwise/stream.py): the same layer inputs as whole-network passes, for less work."""
import copy

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.layerwise.stream import LayerInputs, block_of, input_of
from deepshrink.models.cifar_resnet import resnet20
from deepshrink.models.resnet import Bottleneck, ResNet


def _layers(model, kinds=(nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def _tiny_bottleneck_resnet():
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 2, 1, 1], num_classes=5).eval()


class _Counter:
    """Counts the calls of a module (forward pre-hook)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1


@pytest.mark.parametrize("make, shape", [(lambda: resnet20().eval(), (4, 3, 16, 16)),
                                         (_tiny_bottleneck_resnet, (2, 3, 40, 40))])
def test_every_layer_gets_exactly_the_whole_network_input_with_far_fewer_stem_passes(make, shape):
    model = make()
    batches = [torch.randn(shape) for _ in range(3)]
    names = _layers(model)
    expected = {n: [input_of(model, model.get_submodule(n), b) for b in batches] for n in names}
    stem = _Counter(model.conv1)
    stream = LayerInputs(model, batches, range(3))
    for name in names:
        got = dict(stream.inputs(name))
        assert sorted(got) == [0, 1, 2]
        for index in range(3):
            assert torch.equal(got[index], expected[name][index]), name
    assert stream.fallbacks == 0
    # whole-network passes run the stem once per layer and batch; the cache only when it enters a stage
    assert stem.calls * 4 < len(names) * len(batches)


def test_a_forward_that_is_not_a_chain_of_its_blocks_falls_back_and_stays_exact():
    class Odd(nn.Module):
        """Blocks in a ModuleList, but each block's input is rescaled and one block takes two arguments."""

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)) for _ in range(3))
            self.gate = nn.Linear(6, 6)

        def forward(self, x):
            x = self.blocks[0](x)
            x = self.blocks[1](2 * x)  # not blocks[0]'s output
            return self.blocks[2](x) + self.gate(x)

    class TwoArgs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x, scale):
            return self.fc(x) * scale

    class Caller(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = nn.ModuleList([TwoArgs(), TwoArgs()])

        def forward(self, x):
            return self.parts[1](self.parts[0](x, 2.0), 3.0)

    class Doubler(nn.Module):
        """Changes its input in place before its layers read it."""

        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(self.fc(x.mul_(2)))

    torch.manual_seed(0)
    for model in (Odd().eval(), Caller().eval(), nn.Sequential(nn.Linear(6, 6), Doubler(), nn.Linear(6, 6)).eval()):
        batches = [torch.randn(5, 6) for _ in range(2)]
        stream = LayerInputs(model, batches, range(2))
        for name in _layers(model):
            expected = [input_of(model, model.get_submodule(name), b) for b in batches]
            for reader in (stream, LayerInputs(model, batches, range(2))):  # walked there, and straight there
                got = [x for _, x in reader.inputs(name)]
                assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected)), name
    assert block_of(Caller(), "parts.1.fc") == "parts.1"


@pytest.mark.parametrize("recipe", [{"method": "ldnq", "params": {"levels": 3, "iterations": 5}},
                                    {"method": "lobs", "params": {"sparsity": 0.5, "mode": "one_shot"}},
                                    {"method": "pq", "params": {"n_centroids": 16, "iterations": 3}},
                                    # layers changed beyond the one solved: pending ones (the cascade), the
                                    # solved one swapped for a trainable and back (PQ's per-layer fine-tuning)
                                    {"method": "ldnq", "params": {"levels": 3, "iterations": 5, "cascade_steps": 2}},
                                    {"method": "pq", "params": {"n_centroids": 16, "iterations": 3,
                                                                "layer_finetune_steps": 2}}])
def test_compressing_with_the_cache_gives_the_same_model_as_without(recipe):
    torch.manual_seed(1)
    base = resnet20().eval()
    calib = [(torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    results = []
    for cache in (True, False):
        spec = copy.deepcopy(recipe)
        spec["params"]["cache_inputs"] = cache
        out = deepshrink.compress(copy.deepcopy(base), spec, calib_data=calib).model
        results.append(out.state_dict())
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
