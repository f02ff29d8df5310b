"""Every registered method's handler holds all its fields from `__init__`: none appears mid-run.

A reader (or a resumed run) sees a handler's whole state from the start; a field that a later step adds
is state nobody can find by reading the constructor.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import deepshrink
from deepshrink.config import load_recipe, select_layers
from deepshrink.methods import CompressContext
from deepshrink.registry import METHODS

TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "lr": 0.01, "log_every": 1000}


@pytest.mark.parametrize("name", deepshrink.list_methods())
def test_a_handler_has_every_field_from_init(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(2)]
    recipe = load_recipe({"method": name, "train": TRAIN})
    handler = METHODS.get(name).handler_cls(recipe, select_layers(model, recipe))
    fields = set(vars(handler))
    model = handler.compress(model, CompressContext(train_data=data, val_data=data, calib_data=data,
                                                    train=recipe.train, calib=recipe.calib))
    handler.convert(model)
    assert set(vars(handler)) - fields == set(), f"{name}: fields added after __init__"
