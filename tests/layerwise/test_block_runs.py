"""Paused block runs (layerwise/block_runs.py) behind the cached layer inputs: the same inputs for less work."""
import pytest
import torch
from torch import nn

from deepshrink.layerwise import stream as stream_module
from deepshrink.layerwise.block_runs import BlockGraph, BlockRun
from deepshrink.layerwise.stream import LayerInputs, input_of
from deepshrink.models.resnet import Bottleneck, ResNet
from deepshrink.nn import set_module


def _bottleneck_resnet():
    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 3, 1, 1], num_classes=5).eval()


def _walk(model, batches, names, change, reading=None):
    """Read every layer's inputs in order, as a layer-wise method does, calling `change(name)` after each;
    assert each equals a whole-network pass of the model as it is at that moment. `reading["on"]` is
    True while the stream reads."""
    reading = {} if reading is None else reading
    stream = LayerInputs(model, batches, range(len(batches)))
    for name in names:
        expected = [input_of(model, model.get_submodule(name), b) for b in batches]
        reading["on"] = True
        got = dict(stream.inputs(name))
        reading["on"] = False
        assert sorted(got) == list(range(len(batches))), name
        for index, x in got.items():
            assert torch.equal(x, expected[index]), name
        memory = sum(x.untyped_storage().nbytes() for x in stream.cache or [])
        memory += sum(run.nbytes() for run in stream.runs if run is not None)
        assert memory <= stream.largest_cache or stream.cache is None  # runs stay within the largest cache
        change(name)
    return stream


def test_a_run_paused_before_a_layer_goes_on_with_the_layer_as_changed():
    block = _bottleneck_resnet().layer2[1]
    graph = BlockGraph(block)
    x = torch.randn(2, 512, 6, 6)  # (B, C, H, W): layer2 takes 4 x 128 channels
    run = BlockRun(graph, x)
    run.run_to(graph.first_call(block.conv3))
    assert torch.equal(run.argument(), input_of(block, block.conv3, x))
    with torch.no_grad():
        block.conv3.weight.mul_(-2)  # solved while the run waits
    with torch.no_grad():
        assert torch.equal(run.finish(), block(x))
    assert graph.first_call(nn.Conv2d(1, 1, 1)) is None


@pytest.mark.parametrize("batches", [3, 8])
def test_layers_changed_between_reads_get_the_whole_network_inputs_with_fewer_block_passes(monkeypatch, batches):
    calls = {}
    for runs in (False, True):
        if not runs:  # every block read by hooks, as where torch.fx cannot trace it
            monkeypatch.setattr(stream_module, "_traced", lambda block: None)
        else:
            monkeypatch.undo()
        model = _bottleneck_resnet()
        torch.manual_seed(1)
        inputs = [torch.randn(8, 3, 40, 40) for _ in range(batches)]
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        reading, calls[runs] = {}, []
        model.layer2[2].conv1.register_forward_pre_hook(  # counts the images it runs on
            lambda m, a, c=calls[runs]: c.append(a[0].shape[0]) if reading.get("on") else None)

        def solve(name, model=model):  # a method writing back a layer; a BatchNorm's statistics shift
            module = model.get_submodule(name)
            with torch.no_grad():
                if isinstance(module, nn.Conv2d):
                    module.weight.copy_(torch.sign(module.weight) * module.weight.abs().mean())
                else:
                    module.running_mean.add_(0.1)

        stream = _walk(model, inputs, names, solve, reading)
        assert stream.fallbacks == 0 and (stream.graph is not None) == runs
    # read by hooks, each of the block's 5 layers after conv1 runs conv1 again on every batch; paused runs
    # run it once per batch, and the checks on the probe (2 images) about twice per layer of the block
    assert sum(calls[False]) >= 5 * 8 * batches and sum(calls[True]) <= 8 * batches + 2 * 14, calls


def test_a_module_swapped_in_after_its_inputs_are_read_is_the_one_the_runs_call():
    model = _bottleneck_resnet()
    batches = [torch.randn(2, 3, 40, 40) for _ in range(2)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]

    def swap(name):  # as PQ does around its per-layer fine-tuning
        old = model.get_submodule(name)
        new = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight.flip(0))
        set_module(model, name, new)

    _walk(model, batches, names, swap)


def test_a_block_that_cannot_be_traced_is_read_by_hooks_and_stays_exact():
    class Branchy(nn.Module):
        """Control flow on a tensor's value: torch.fx cannot trace it."""

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 6)

        def forward(self, x):
            y = self.fc1(x)
            return self.fc2(y) if y.sum() > 0 else self.fc2(-y)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), Branchy(), Branchy()).eval()
    batches = [torch.randn(4, 6) for _ in range(2)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    stream = _walk(model, batches, names, lambda name: model.get_submodule(name).weight.data.mul_(0.5))
    assert stream.graph is None and stream.fallbacks == 0


def test_a_run_that_disagrees_with_a_hook_on_the_module_gives_way_to_hooks():
    class Scaled(nn.Module):
        """Reads a plain attribute in forward: the traced graph keeps the value it had when traced."""

        def __init__(self):
            super().__init__()
            self.fc, self.out, self.scale = nn.Linear(6, 6), nn.Linear(6, 6), 1.0

        def forward(self, x):
            return self.out(self.fc(x) * self.scale)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), Scaled(), Scaled()).eval()
    batches = [torch.randn(4, 6) for _ in range(3)]

    def change(name):
        if name == "1.fc":
            model[1].scale = 2.0  # after the block was traced

    stream = _walk(model, batches, ["0", "1.fc", "1.out"], change)
    assert stream.graph is None and stream.fallbacks == 0
    list(stream.inputs("2.fc"))  # the next block is traced again
    assert stream.graph is not None
