"""deepshrink.load(path, frozen=True): the same outputs as the loaded model, no module tree, one buffer.
(Every registered method's frozen model is compared with its loaded one in tests/packing/test_conformance.py.)"""
import gc
import types

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.errors import UserError
from deepshrink.nn import tensor_nbytes
from deepshrink.runtime import FrozenModel


def _reachable(root):
    """Every object reachable from `root` through containers and slotted objects (not classes or functions)."""
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, str, bytes, int, float, types.FunctionType,
                                                types.BuiltinFunctionType, types.ModuleType)):
            continue
        seen.add(id(obj))
        found.append(obj)
        if isinstance(obj, torch.Tensor):
            continue
        stack.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("fixture", ["w4a4_digits", "weight_only_digits"])
def test_frozen_model_gives_the_loaded_models_outputs_bit_for_bit(fixture, request, digits_test):
    loaded, path = request.getfixturevalue(fixture)
    frozen = deepshrink.load(path, frozen=True)
    images = digits_test[0][:64]
    with torch.no_grad():
        assert torch.equal(frozen(images), loaded(images))


def test_frozen_model_keeps_no_module_and_no_tensor_but_its_buffer(w4a4_digits):
    loaded, path = w4a4_digits
    frozen = deepshrink.load(path, frozen=True)
    assert [o for o in _reachable(loaded) if isinstance(o, nn.Module)]  # the walk does find modules
    objects = _reachable(frozen)
    assert not [o for o in objects if isinstance(o, nn.Module)]
    tensors = [o for o in objects if isinstance(o, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0] is frozen.buffer
    # every tensor the loaded model holds, once, each padded to 8 bytes at most
    n_tensors = len(list(loaded.parameters())) + len(list(loaded.buffers())) + sum(
        len(m.resident_tensors()) for m in loaded.modules() if hasattr(m, "resident_tensors"))
    assert tensor_nbytes(loaded) <= frozen.nbytes <= tensor_nbytes(loaded) + 7 * n_tensors


def test_frozen_model_holds_only_its_buffer_and_bytes_between_calls(w4a4_digits, digits_test):
    # no per-layer Python objects stay resident: the program is expanded for a call and dropped after it
    _, path = w4a4_digits
    frozen = deepshrink.load(path, frozen=True)
    with torch.no_grad():
        frozen(digits_test[0][:4])
    assert [type(o) for o in _reachable(frozen)] == [FrozenModel, torch.Tensor]
    assert "instructions" in repr(frozen)


def test_frozen_model_with_an_attribute_pickle_cannot_take_keeps_its_program_and_matches():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    model[0].note = lambda: "a user's callback"  # a leaf module's attribute: the program cannot be pickled
    frozen, x = FrozenModel(model), torch.randn(2, 3, 6, 6)
    assert len(_reachable(frozen)) > 2  # the program stays as objects
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))


def test_frozen_model_of_a_user_model_with_functions_and_methods_matches_it():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.register_buffer("offset", torch.arange(4.0).reshape(1, 4, 1, 1))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = torch.relu(self.conv(x) + self.offset)  # a get_attr, a function, an add
            return self.fc(y.mean(dim=(2, 3)).reshape(x.shape[0], -1))  # methods, with kwargs

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(FrozenModel(model)(x), model(x))


def test_frozen_refuses_decode_and_a_model_with_hooks_or_untraceable_forward(w4a4_digits):
    _, path = w4a4_digits
    with pytest.raises(ValueError, match="choose one"):
        deepshrink.load(path, decode=True, frozen=True)
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(lambda *args: None)
    with pytest.raises(UserError, match="cannot freeze 0: it has forward_hooks registered"):
        FrozenModel(model)

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UserError, match="torch.fx cannot trace its forward"):
        FrozenModel(Branchy())
