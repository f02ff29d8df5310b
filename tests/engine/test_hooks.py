"""Every extension point of engine.hooks is called, in the documented order, with effect."""
import pytest
import torch

from deepshrink.config import TrainConfig
from deepshrink.engine import Hook, Trainer

CONFIG = dict(lr=0.05, weight_decay=0.0, schedule="constant", optimizer="sgd")


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def param_groups(self, trainer, model):
        self.calls.append("param_groups")

    def on_train_start(self, trainer):
        assert trainer.optimizer is not None
        self.calls.append("on_train_start")

    def on_epoch_start(self, trainer, epoch):
        self.calls.append(f"on_epoch_start{epoch}")

    def before_step(self, trainer, inputs, targets):
        self.calls.append("before_step")

    def extra_loss(self, trainer, inputs, outputs, targets):
        self.calls.append("extra_loss")

    def after_backward(self, trainer):
        assert all(p.grad is not None for p in trainer.model.parameters())
        self.calls.append("after_backward")

    def after_step(self, trainer):
        self.calls.append(f"after_step{trainer.step}")

    def on_epoch_end(self, trainer, epoch, metrics):
        assert metrics["epoch"] == epoch + 1 and "val_top1" in metrics
        self.calls.append(f"on_epoch_end{epoch}")

    def on_train_end(self, trainer):
        self.calls.append("on_train_end")


def test_hooks_are_called_in_the_documented_order(make_net, make_loader_pair):
    train, val = make_loader_pair()
    recorder = Recorder()
    config = TrainConfig(epochs=2, max_steps_per_epoch=2, **CONFIG)
    Trainer(make_net(), train, val, config, hooks=[recorder]).fit()
    step = ["before_step", "extra_loss", "after_backward"]
    assert recorder.calls == (
        ["param_groups", "on_train_start", "on_epoch_start0"] + step + ["after_step1"] + step + ["after_step2"]
        + ["on_epoch_end0", "on_epoch_start1"] + step + ["after_step3"] + step + ["after_step4"]
        + ["on_epoch_end1", "on_train_end"])
    assert train.epochs_seen == [0, 1]  # the loader's set_epoch is called every epoch


class Capture(Hook):
    def after_backward(self, trainer):
        self.grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


class L2Term(Hook):
    """extra loss = strength * ||w||^2 of the last layer; its gradient is 2 * strength * w."""

    def __init__(self, strength):
        self.strength = strength

    def extra_loss(self, trainer, inputs, outputs, targets):
        return self.strength * trainer.model[-1].weight.pow(2).sum()


def test_extra_loss_adds_its_gradient(make_net, make_loader_pair):
    config = TrainConfig(epochs=1, max_steps_per_epoch=1, **CONFIG)
    plain, regularised = Capture(), Capture()
    first = make_net()
    weight = first[-1].weight.detach().clone()
    Trainer(first, make_loader_pair()[0], config=config, hooks=[plain]).fit()
    Trainer(make_net(), make_loader_pair()[0], config=config, hooks=[L2Term(0.5), regularised]).fit()
    difference = regularised.grads["4.weight"] - plain.grads["4.weight"]
    torch.testing.assert_close(difference, 2 * 0.5 * weight)
    torch.testing.assert_close(regularised.grads["0.weight"], plain.grads["0.weight"])


class FreezeConv(Hook):
    """Rewrites gradients: the first conv never moves."""

    def after_backward(self, trainer):
        trainer.model[0].weight.grad.zero_()


def test_after_backward_can_rewrite_gradients(make_net, make_loader_pair):
    model = make_net()
    before = model[0].weight.detach().clone()
    Trainer(model, make_loader_pair()[0], config=TrainConfig(epochs=1, **CONFIG), hooks=[FreezeConv()]).fit()
    assert torch.equal(model[0].weight, before)
    assert not torch.equal(model[0].bias, before.new_zeros(4))


class OnlyLastLayer(Hook):
    def param_groups(self, trainer, model):
        return [{"params": list(model[-1].parameters()), "lr": 0.2}]


def test_param_groups_hook_decides_what_the_optimizer_gets(make_net, make_loader_pair):
    model = make_net()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("4.")}
    trainer = Trainer(model, make_loader_pair()[0], config=TrainConfig(epochs=1, **CONFIG),
                      hooks=[Hook(), OnlyLastLayer()])
    trainer.fit()
    assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == list(model[-1].parameters())
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.2)  # constant schedule keeps it
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


class FlipLabels(Hook):
    def before_step(self, trainer, inputs, targets):
        return inputs, (targets + 1) % 4


def test_before_step_replaces_the_batch(make_net, make_loader_pair):
    train, val = make_loader_pair()
    config = TrainConfig(epochs=3, lr=0.1, weight_decay=0.0)
    normal = Trainer(make_net(), train, val, config).fit()
    shifted = Trainer(make_net(), make_loader_pair()[0], val, config, hooks=[FlipLabels()]).fit()
    assert normal["val_top1"] > 60 and shifted["val_top1"] < 40
