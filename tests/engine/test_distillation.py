"""Knowledge distillation (train.distill): the hook's loss formula, and compress() wiring the teacher."""
import copy

import pytest
import torch
import torch.nn.functional as F

import deepshrink
from deepshrink.config import TrainConfig
from deepshrink.engine import Trainer
from deepshrink.engine.hooks import Distillation
from deepshrink.errors import UserError
from deepshrink.methods import CompressContext


def test_distillation_loss_is_t_squared_kl_of_softened_outputs(make_net):
    torch.manual_seed(0)
    teacher = make_net(seed=1)
    inputs = torch.randn(8, 1, 6, 6)
    student = torch.randn(8, 4)
    hook = Distillation(teacher, weight=0.7, temperature=4.0)
    with torch.no_grad():
        t = teacher(inputs)
    p = F.softmax(t / 4.0, dim=1)  # independent: sum p (log p - log q) / batch, times T^2 and the weight
    q = F.softmax(student / 4.0, dim=1)
    expected = 0.7 * 16.0 * (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(hook.extra_loss(None, inputs, student, None), expected, atol=1e-6)
    assert all(not p.requires_grad for p in teacher.parameters())  # the teacher is frozen


def test_distillation_to_an_identical_teacher_adds_nothing(make_net):
    net = make_net().eval()
    inputs = torch.randn(8, 1, 6, 6)
    with torch.no_grad():
        assert float(Distillation(copy.deepcopy(net), 1.0).extra_loss(None, inputs, net(inputs), None)) < 1e-10


def test_compress_with_distill_uses_a_frozen_copy_of_the_given_model(make_net, make_loader_pair, monkeypatch):
    base = make_net(seed=3)
    before = copy.deepcopy(base.state_dict())
    seen = []
    original = Distillation.extra_loss

    def spy(self, trainer, inputs, outputs, targets):
        seen.append(self.teacher)
        return original(self, trainer, inputs, outputs, targets)

    monkeypatch.setattr(Distillation, "extra_loss", spy)
    deepshrink.compress(base, {"method": "bwn", "keep_first_last": False}, train_data=make_loader_pair()[0],
                        overrides=["train.epochs=1", "train.distill=1.0", "train.distill_temperature=2"])
    assert len(seen) == 6  # every step of the epoch (6 toy batches) distils
    teacher = seen[0]
    assert teacher is not base and not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the float model
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the user's model untouched


def test_distill_weight_and_temperature_are_validated():
    with pytest.raises(UserError, match="train.distill"):
        TrainConfig(distill=-1)
    with pytest.raises(UserError, match="distill_temperature"):
        TrainConfig(distill_temperature=0)


def test_fit_refuses_distill_without_a_teacher(make_net, make_loader_pair):
    ctx = CompressContext(train_data=make_loader_pair()[0], train=TrainConfig(epochs=1, distill=1.0))
    with pytest.raises(UserError, match="teacher"):
        ctx.fit(make_net())


def test_trainer_reports_the_distillation_term(make_net, make_loader_pair):
    teacher = make_net(seed=5)
    config = TrainConfig(epochs=1, max_steps_per_epoch=2)
    final = Trainer(make_net(), make_loader_pair()[0], config=config, hooks=[Distillation(teacher, 1.0)]).fit()
    assert final["train_extra_loss"] > 0
