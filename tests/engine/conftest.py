"""Tiny models and data for the training-loop tests: seconds, not minutes."""
from __future__ import annotations

import pytest
import torch
from torch import nn


class ShardedLoader:
    """A reproducible (inputs, labels) loader with set_epoch, like deepshrink.data.make_loader."""

    def __init__(self, inputs, labels, batch_size, seed=0, shuffle=True):
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.epochs_seen = []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self):
        return len(self.labels) // self.batch_size

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
                 if self.shuffle else torch.arange(n))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.inputs[index], self.labels[index]


def toy_data(n=192, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 1, 6, 6, generator=generator)  # (N, C, H, W)
    labels = (inputs[:, 0, :3].mean((1, 2)) > 0).long() * 2 + (inputs[:, 0, 3:].mean((1, 2)) > 0).long()
    return inputs, labels % classes


def tiny_net(seed=0, batchnorm=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3)] + ([nn.BatchNorm2d(4)] if batchnorm else []) + \
        [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4)]
    return nn.Sequential(*layers)


@pytest.fixture
def toy_loaders():
    inputs, labels = toy_data()
    return ShardedLoader(inputs, labels, 32), ShardedLoader(inputs[:64], labels[:64], 32, shuffle=False)


@pytest.fixture
def make_net():
    """Factory: the same tiny conv net for the same seed."""
    return tiny_net


@pytest.fixture
def make_loader_pair():
    """Factory: (train, val) toy loaders; train is shuffled per epoch from its seed."""

    def make(batch_size=32, seed=0):
        inputs, labels = toy_data()
        return ShardedLoader(inputs, labels, batch_size, seed), ShardedLoader(inputs[:64], labels[:64], 32,
                                                                              shuffle=False)

    return make
