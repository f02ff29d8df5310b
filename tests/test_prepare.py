"""Before any method runs: attention split into Linear layers, and a layer whose weight the network reads
outside the layer's forward (or never runs) refused with the name of the module that reads it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.nn import SplitAttention
from deepshrink.prepare import check_layers_run


class ReadsChildWeight(nn.Module):
    """Calls F.linear with its child's weight itself: `proj.forward()` never runs."""

    def __init__(self, dim=8):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return F.linear(x, self.proj.weight.t().t(), self.proj.bias)


class Net(nn.Module):
    def __init__(self, middle: nn.Module):
        super().__init__()
        self.stem, self.middle, self.head = nn.Linear(8, 8), middle, nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.middle(self.stem(x)))


def _data():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen))]


@pytest.mark.parametrize("method", ["bwn", "ldnq"])
def test_a_custom_module_reading_a_childs_weight_is_refused_by_name(method):
    with pytest.raises(UserError, match=r"^'middle' \(ReadsChildWeight\) reads the weight of layer 'middle.proj' "
                                        r"outside 'middle.proj''s forward.*skip: true"):
        deepshrink.compress(Net(ReadsChildWeight()), method, train_data=_data(), overrides=["train.epochs=0"])


def test_a_multihead_attention_subclass_is_refused_naming_it():
    class MyAttention(nn.MultiheadAttention):  # its forward may differ: never swapped for SplitAttention
        pass

    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = MyAttention(8, 2)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    model = Net(Attending())
    with pytest.raises(UserError, match=r"'middle.attn' \(MyAttention\) reads the weight of layer "
                                        r"'middle.attn.out_proj'"):
        deepshrink.compress(model, "bwn", train_data=_data(), overrides=["train.epochs=0"])


def test_a_layer_that_never_runs_is_refused_by_name():
    model = Net(nn.Sequential(nn.Linear(8, 8)))
    model.unused = nn.Linear(8, 8)
    model.tail = nn.Linear(8, 8)  # the last layer, kept float with keep_first_last
    with pytest.raises(UserError, match=r"layer 'unused' never runs in a forward pass of the model"):
        deepshrink.compress(model, "bwn", train_data=_data(), overrides=["train.epochs=0"])
    # the fix the message gives works
    deepshrink.compress(model, {"method": "bwn", "layers": [{"pattern": "unused", "skip": True}]},
                        train_data=_data(), overrides=["train.epochs=0"])


def test_weights_read_inside_their_own_forward_and_shapes_read_anywhere_pass():
    class ReadsShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(x) * self.proj.weight.shape[0]

    check_layers_run(Net(ReadsShape()), ["stem", "middle.proj", "head"], torch.randn(2, 8))


def test_compress_splits_multihead_attention_before_the_method_runs():
    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):  # (B, T, 8)
            return self.attn(x, x, x, need_weights=False)[0]

    model = Net(Attending())
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 5, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen))]
    result = deepshrink.compress(model, "bwn", train_data=data, overrides=["train.epochs=0"])
    assert type(model.middle.attn) is nn.MultiheadAttention  # the caller's model is left as it was
    assert type(result.model.middle.attn) is SplitAttention
    assert all(hasattr(result.model.middle.attn.get_submodule(n), "encoded")
               for n in ("q_proj", "k_proj", "v_proj", "out_proj"))


def test_reading_the_first_batch_leaves_the_global_random_state_alone():
    from torch.utils.data import DataLoader, TensorDataset

    from deepshrink.prepare import first_inputs

    loader = DataLoader(TensorDataset(torch.randn(6, 8), torch.zeros(6)), batch_size=3, shuffle=True)
    torch.manual_seed(0)
    inputs = first_inputs(None, loader)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert inputs.shape == (2, 8) and torch.equal(torch.rand(1), after)


def test_peeking_at_the_first_batch_leaves_the_training_order_alone():
    # the layer check reads one batch before the method trains; a deepshrink loader counts passes (each
    # its own shuffle), so a counted peek made the first training epoch see the second epoch's order
    from deepshrink.data import get_dataset, make_loader
    from deepshrink.prepare import first_inputs

    def first_labels(peek: bool):
        loader = make_loader(get_dataset("digits", "train"), 32, train=True, augment=False)
        if peek:
            first_inputs(loader)
        return [labels for _, labels in loader][:3]

    assert all(torch.equal(a, b) for a, b in zip(first_labels(True), first_labels(False)))
