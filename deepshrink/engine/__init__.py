"""THE training and evaluation loop, checkpoints, run folders and distributed training.

    from deepshrink.engine import Trainer, evaluate, load_weights, Hook
    metrics = Trainer(model, train_loader, test_loader, TrainConfig(epochs=10), run_dir="runs/x").fit()
"""
from ..config import TrainConfig
from .checkpoint import load_weights, read_checkpoint, save_checkpoint
from .evaluate import evaluate, topk_correct
from .hooks import Hook
from .trainer import Trainer, deterministic_mode, seed_everything

__all__ = ["Hook", "TrainConfig", "Trainer", "deterministic_mode", "evaluate", "load_weights",
           "read_checkpoint", "save_checkpoint", "seed_everything", "topk_correct"]
