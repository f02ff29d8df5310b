"""THE training loop. Compression methods plug in through hooks (engine.hooks), never by copying it.

Example::

    trainer = Trainer(model, train_loader, test_loader, TrainConfig(epochs=10, lr=0.1), run_dir="runs/a")
    metrics = trainer.fit()          # {"val_top1": ..., "images_per_s": ..., ...}
    Trainer(model, train_loader, test_loader, config, run_dir="runs/a", resume="runs/a/last.pt").fit()

One iteration: before_step -> forward -> task loss + extra_loss terms -> backward -> after_backward
-> optimizer step -> scheduler step (per iteration) -> after_step. Each epoch ends with evaluation,
on_epoch_end, metrics.jsonl / curves.png, and `last.pt` (+ `best.pt` when val top-1 improves).

Ctrl-C lets the step in progress finish (engine.interrupt), then writes `last.pt` holding the position
in the epoch; `resume` continues from that step, and with `deterministic` the result equals an
uninterrupted run's bit for bit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import TrainConfig, _build
from ..errors import UserError
from . import distributed as ddp
from .checkpoint import (FORMAT, VERSION, capture_rng_state, check_state_dict, read_checkpoint,
                         restore_rng_state, save_checkpoint)
from .divergence import DivergenceWatch
from .evaluate import evaluate, logits_of, model_device
from .interrupt import InterruptGuard
from .optim import build_optimizer, build_scheduler
from .runlog import RunLog


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True):
    """Deterministic kernels (warn-only where none exists) and no cuDNN autotuning, restored on exit."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's `random`."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Trains `model` on `train_data` (any iterable of (float inputs, int64 labels) with len()).

    Attributes hooks may use: model (unwrapped), optimizer, scheduler, config, epoch, step, device,
    steps_per_epoch, total_steps, train_data, val_data, run_dir, epoch_progress (batches done in the
    current epoch and their running sums).
    `resume` is a checkpoint written by a previous run of the same configuration; the continued
    run ends with the same weights as an uninterrupted one when `config.deterministic` is set, also
    from a checkpoint that Ctrl-C wrote in the middle of an epoch (exact when the loader's batches
    depend on its epoch alone, as `make_loader`'s do).
    `progress`: True = tqdm bar, False = log lines, None = bar only when stderr is a terminal; none of
    them inside `deepshrink.quiet()` (the per-epoch lines still print).
    `meta` is extra information recorded in config.yaml (model name, data set, ...).
    """

    def __init__(self, model: nn.Module, train_data, val_data=None, config: TrainConfig | dict | None = None,
                 hooks=(), run_dir=None, device=None, resume=None, progress: bool | None = None,
                 meta: dict | None = None):
        if isinstance(config, dict):
            config = _build(TrainConfig, config, "train")
        self.config = config or TrainConfig()
        self.train_data, self.val_data = train_data, val_data
        self.hooks = list(hooks)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume = Path(resume) if resume is not None else None
        self.meta = dict(meta or {})
        self.device = torch.device(device) if device is not None else model_device(model)
        self.distributed = ddp.init_from_env(self.device)
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", ddp.local_rank())
            torch.cuda.set_device(self.device)
        shards = getattr(train_data, "world_size", None)
        if self.distributed and shards is not None and shards != ddp.world_size():
            raise UserError(f"the training loader is split for {shards} process(es) but {ddp.world_size()} run: "
                            "build it with make_loader(..., rank=RANK, world_size=WORLD_SIZE)")
        self.amp = bool(self.config.amp and self.device.type == "cuda")
        self.model = model.to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward_model = self.model
        self.optimizer = self.scheduler = self.scaler = None
        self.epoch = self.step = 0
        # the epoch in progress: batches done and their running sums (None between epochs)
        self.epoch_progress: dict | None = None
        self.interrupts = InterruptGuard(enabled=False)  # fit() installs the active one
        self.best_top1: float | None = None
        self.last_metrics: dict = {}
        steps = len(train_data)
        if self.config.max_steps_per_epoch:
            steps = min(steps, int(self.config.max_steps_per_epoch))
        if steps < 1 and self.config.epochs > 0:
            raise UserError("the training data is empty: no batch to train on")
        self.steps_per_epoch = steps
        self.total_steps = int(math.ceil(self.config.epochs * steps - 1e-9))
        self.divergence = DivergenceWatch(self.total_steps)
        self.n_epochs = int(math.ceil(self.total_steps / steps)) if steps else 0
        self.log = RunLog(self.run_dir, enabled=ddp.is_main_process(), progress=progress,
                          tensorboard=getattr(self.config, "tensorboard", False),
                          log_every=self.config.log_every)
        if self.config.amp and not self.amp:
            self.log.message("AMP is CUDA-only: training in float32 on " + str(self.device))

    # ------------------------------------------------------------ set-up
    def _build_optimizer(self) -> None:
        groups = None
        for hook in self.hooks:
            groups = hook.param_groups(self, self.model)
            if groups is not None:
                break
        self.optimizer = build_optimizer(self.model, self.config, groups)
        self.scheduler = build_scheduler(self.optimizer, self.config, max(1, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _resolved_config(self) -> dict:
        return {"train": dataclasses.asdict(self.config), "device": str(self.device),
                "world_size": ddp.world_size(), "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "arch": getattr(self.model, "deepshrink_arch", None), **self.meta}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict:
        """Everything needed to continue this run exactly (tensors and primitives only)."""
        return {
            "format": FORMAT, "version": VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else {} for hook in self.hooks],
            "epoch": self.epoch, "step": self.step,
            "epoch_progress": dict(self.epoch_progress) if self.epoch_progress else None,
            "rng": capture_rng_state(),
            "loader_seed": getattr(self.train_data, "seed", None),
            "config": dataclasses.asdict(self.config),
            "arch": getattr(self.model, "deepshrink_arch", None),
            "data": self.meta.get("data"),  # with "arch": `deepshrink eval best.pt` needs no --model, --data
            "metrics": dict(self.last_metrics), "best_top1": self.best_top1,
        }

    def _load_resume(self, data: dict, full: bool) -> None:
        check_state_dict(self.model, data["model"], self.resume)
        self.model.load_state_dict(data["model"])
        if not full:
            return
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if self.scaler is not None and data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        for hook, state in zip(self.hooks, data.get("hooks", [])):
            if state and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(state)
        changed = sorted(k for k, v in dataclasses.asdict(self.config).items()
                         if k not in ("log_every", "tensorboard") and _comparable(data["config"].get(k)) != _comparable(v))
        if changed:
            self.log.message(f"resuming with changed settings {changed}: the run will differ from an "
                             "uninterrupted one")
        self.epoch, self.step = int(data["epoch"]), int(data["step"])
        self.best_top1, self.last_metrics = data.get("best_top1"), dict(data.get("metrics") or {})
        progress = data.get("epoch_progress")  # written by Ctrl-C in the middle of an epoch
        self.epoch_progress = dict(progress) if progress else None
        if data.get("loader_seed") is not None and hasattr(self.train_data, "seed"):
            self.train_data.seed = data["loader_seed"]
        restore_rng_state(data["rng"])

    def _save(self, improved: bool) -> None:
        if self.run_dir is None or not ddp.is_main_process():
            return
        payload = self.checkpoint_payload()
        save_checkpoint(payload, self.run_dir / "last.pt")
        if improved:
            save_checkpoint(payload, self.run_dir / "best.pt")

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train for `config.epochs` (fractional allowed); returns the final metrics."""
        resume_data = None
        if self.resume is not None:
            resume_data = read_checkpoint(self.resume)
            if resume_data.get("format") != FORMAT:
                raise UserError(f"{self.resume} is a plain state_dict, not a training checkpoint to resume")
            self._load_resume(resume_data, full=False)  # hooks and param_groups see the trained weights
        else:
            seed_everything(self.config.seed)
        with deterministic_mode(self.config.deterministic):
            self._build_optimizer()
            self.log.write_config(self._resolved_config())
            for hook in self.hooks:
                hook.on_train_start(self)
            if resume_data is not None:
                self._load_resume(resume_data, full=True)
                self.log.load_history()
                self.log.message(f"resumed from {self.resume} at epoch {self.epoch}, step {self.step}")
            images, seconds = 0, 0.0
            # under torchrun every rank gets the signal at a different point of its step: no holding there
            with InterruptGuard(enabled=not self.distributed) as self.interrupts:
                try:
                    while self.epoch < self.n_epochs:
                        stats = self._train_epoch(self.epoch)
                        images, seconds = images + stats.pop("images"), seconds + stats["epoch_seconds"]
                        self._end_epoch(stats)
                except KeyboardInterrupt:
                    self._save_interrupted()
                    raise
                finally:
                    self.log.close()
            for hook in self.hooks:
                hook.on_train_end(self)
        final = {k: v for k, v in self.last_metrics.items() if k not in ("epoch_seconds", "lr")}
        final.update(epochs=self.config.epochs, steps=self.step, best_top1=self.best_top1)
        if images:
            final["images_per_s"] = images / max(seconds, 1e-9)
        if self.val_data is not None and "val_top1" not in final:
            final.update({f"val_{k}": v for k, v in evaluate(self.model, self.val_data, self.device).items()})
        return final

    def _epoch_steps(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def _train_epoch(self, epoch: int) -> dict:
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)
        progress = self.epoch_progress  # not None: resumed in the middle of this epoch
        if progress is None:  # a resumed epoch already ran its on_epoch_start: hooks see each call once
            for hook in self.hooks:
                hook.on_epoch_start(self, epoch)
            progress = {"batches": 0, "loss_sum": 0.0, "extra_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.epoch_progress = progress
        steps, first = self._epoch_steps(epoch), progress["batches"]
        self.forward_model.train()
        self.log.start_epoch(epoch + 1, steps, done=first)
        start, seconds_before = time.perf_counter(), progress["seconds"]
        for index, (inputs, targets) in enumerate(self._epoch_batches(first, steps), first):
            with self.interrupts.critical():  # Ctrl-C waits for the step's end: a checkpoint between steps
                loss, extra, logits, targets = self._train_step(inputs, targets)
                batch = int(targets.numel())
                batch_correct = int((logits.argmax(1) == targets).sum())
                self.divergence.update(self.step, float(loss), batch_correct, batch, logits.shape[-1])
                progress["loss_sum"] += float(loss) * batch
                progress["extra_sum"] += float(extra) * batch
                progress["correct"] += batch_correct
                progress["seen"] += batch
                progress["batches"] = index + 1
                progress["seconds"] = seconds_before + time.perf_counter() - start
                self.log.step(index, batch * ddp.world_size(), float(loss), self.optimizer.param_groups[0]["lr"])
        self.log.end_epoch()
        seen_all = ddp.sum_across_ranks(progress["seen"], self.device)
        elapsed = progress["seconds"]
        stats = {"train_loss": ddp.sum_across_ranks(progress["loss_sum"], self.device) / max(1, seen_all),
                 "train_top1": 100.0 * ddp.sum_across_ranks(progress["correct"], self.device) / max(1, seen_all)}
        if progress["extra_sum"]:
            stats["train_extra_loss"] = ddp.sum_across_ranks(progress["extra_sum"], self.device) / max(1, seen_all)
        stats.update(epoch_seconds=elapsed, images_per_s=seen_all / max(elapsed, 1e-9), images=int(seen_all))
        return stats

    def _epoch_batches(self, first: int, steps: int):
        """Batches `first` to `steps` - 1 of the epoch the loader is set to. A loader with `resume_at`
        (make_loader's) starts there; of any other, the batches before `first` are drawn and dropped."""
        if first >= steps:
            return iter(())
        if first and hasattr(self.train_data, "resume_at"):
            self.train_data.resume_at(first)
            return itertools.islice(self.train_data, steps - first)
        return itertools.islice(self.train_data, first, steps)

    def _train_step(self, inputs, targets):
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.config.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        for hook in self.hooks:
            replaced = hook.before_step(self, inputs, targets)
            if replaced is not None:
                inputs, targets = replaced
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with autocast:
            outputs = self.forward_model(inputs)
            logits = logits_of(outputs)
            task_loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing)
            extra = torch.zeros((), device=self.device)
            for hook in self.hooks:
                term = hook.extra_loss(self, inputs, outputs, targets)
                if term is not None:
                    extra = extra + term
            loss = task_loss + extra
        if not torch.isfinite(loss):  # before backward: a non-finite loss must not reach the weights
            self.divergence.update(self.step, float(loss.detach()), 0, 1, logits.shape[-1])
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # hooks see true gradients
        else:
            loss.backward()
        for hook in self.hooks:
            hook.after_backward(self)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        for hook in self.hooks:
            hook.after_step(self)
        return task_loss.detach(), extra.detach(), logits.detach(), targets

    def _end_epoch(self, stats: dict) -> None:
        metrics = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **stats}
        if self.val_data is not None:  # Ctrl-C here stops at once: the epoch's training is saved, not its score
            val = evaluate(self.model, self.val_data, self.device, task=f"validate epoch {self.epoch + 1}")
            metrics.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
        with self.interrupts.critical():
            for hook in self.hooks:
                hook.on_epoch_end(self, self.epoch, metrics)
            improved = "val_top1" in metrics and (self.best_top1 is None or metrics["val_top1"] > self.best_top1)
            if improved:
                self.best_top1 = metrics["val_top1"]
            self.epoch += 1
            self.epoch_progress = None
            self.last_metrics = metrics
            self.log.log_epoch(metrics)
            self._save(improved)

    def _save_interrupted(self) -> None:
        """After Ctrl-C: write the position in the epoch to last.pt when the state is at a step boundary."""
        if self.run_dir is None or not ddp.is_main_process():
            return
        last, progress = self.run_dir / "last.pt", self.epoch_progress
        kept = f"--resume continues from {last}" if last.is_file() else "there is no checkpoint to resume from"
        if self.interrupts.torn:
            self.log.message(f"interrupted inside a training step, its changes half made: nothing saved; {kept}")
        elif self.distributed:
            self.log.message(f"interrupted: under torchrun only finished epochs are saved; {kept}")
        elif not progress or not progress["batches"]:
            self.log.message(f"interrupted before a step of epoch {self.epoch + 1}: {kept}")
        else:
            save_checkpoint(self.checkpoint_payload(), last)
            self.log.message(f"interrupted: saved epoch {self.epoch + 1} after step {progress['batches']}/"
                             f"{self._epoch_steps(self.epoch)} to {last}")


def _comparable(value):
    return list(value) if isinstance(value, (tuple, list)) else value
