"""Product quantization of layers ("And the bit goes down", Stock et al., ICLR 2020), and its baseline.

Per layer: cut the weight into blocks of `d` values (3x3 convs: `block_conv3x3`, default 9 = one
kernel; 1x1 convs: `block_conv1x1`, default 4; linear: `block_linear`, default 4), learn K centroids
with activation-weighted k-means (pq_kmeans.py, eq. 3-5), refine codebook and assignments against the
full layer objective with cross-block terms (pq_refine.py; `refit`, `polish_sweeps`), then fine-tune the centroids by distillation
from the original network on the calibration data (`layer_finetune_steps`, Sec. 3.3: the gradient of a
centroid is the sum of the gradients of the blocks assigned to it), and optionally fine-tune all
centroids, BatchNorm and biases, by distillation on the calibration data (`global_distill_steps`) and/or
on the labelled training data with the one training loop (`finetune_epochs`).

Variants: `fuse_bn` (Fusion: fold BN into the conv first, so the fused bias is a free variable moved to
its optimum and fine-tuned; BN keeps its place as an identity plus that bias), `layout="channel"`
(ChangeDim: blocks along input channels), `n_subspaces > 1` (Subspace: a codebook per group of block
positions). `n_centroids` is clamped to the number of blocks of a subspace.
Baseline `kmeans`: the same blocks and K, plain k-means in weight space, no fine-tuning.

Under torchrun nothing here gathers activations: the k-means clusters the weight's blocks (the same on
every rank) under metrics taken from H, and H is built from every rank's shard of the calibration batches
and all-reduced by the driver (base.py). Activations enter only through X X^T, which sums over samples, so
the all-reduced H is exact where all-gathering the sampled activations would cost memory and traffic that
grow with the calibration set; the E-step and M-step then see the H one process sees.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.hooks import Distillation, Hook
from ..errors import UserError
from ..nn import EncodedWeight, pq_blocks, set_module
from ..registry import register_method
from . import hessian as hess
from .base import LayerSolution, LayerwiseConfig, LayerwiseMethod
from .distill import distill, outputs_of
from .fuse import fold_batchnorm, unfold_bias
from .pq_kmeans import weighted_kmeans
from .pq_refine import polish_assignments, refit_codebook


@dataclass
class KMeansConfig(LayerwiseConfig):
    """n_centroids: K per codebook (clamped to the blocks available). block_conv3x3 / block_conv1x1 /
    block_linear: sub-vector size d per layer type (must divide the row; else the largest divisor <= d is
    used). layout: "row" (along the kernel window) | "channel" (ChangeDim). n_subspaces: codebooks per layer.
    iterations: EM iterations. seed: centroid initialisation. codebook_fp16: round the centroids to
    float16 values, which the packed file then stores in 16 bits (the paper stores its centroids in
    float16; the relative rounding error is below 1e-3), halving the codebooks' share of the size."""

    n_centroids: int = 256
    block_conv3x3: int = 9
    block_conv1x1: int = 4
    block_linear: int = 4
    layout: str = "row"
    n_subspaces: int = 1
    iterations: int = 20
    seed: int = 0
    codebook_fp16: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.n_centroids < 2:
            raise UserError(f"n_centroids must be >= 2, got {self.n_centroids}")
        for name in ("block_conv3x3", "block_conv1x1", "block_linear", "n_subspaces"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.layout not in ("row", "channel"):
            raise UserError(f"layout must be 'row' or 'channel' (ChangeDim), got {self.layout!r}")
        if self.iterations < 0:
            raise UserError(f"iterations must be >= 0, got {self.iterations}")


@dataclass
class PQConfig(KMeansConfig):
    """KMeansConfig plus: fuse_bn (Fusion), refit (after the EM, refit the codebook to the full H by
    conjugate gradients, cross-block terms included), polish_sweeps (then move each block to the centroid
    that lowers that full objective most, and refit again), layer_finetune_steps / layer_finetune_lr (per-layer centroid
    distillation on the calibration data), global_distill_steps / global_distill_lr (global fine-tuning
    of centroids, BN affine parameters and biases by distillation from the original network on the
    calibration data only, Adam; 0 = off), finetune_epochs / finetune_lr (the same parameters fine-tuned
    on the labelled training data through the one training loop; 0 = off), finetune_distill (weight of
    KL(original || compressed) added to the cross-entropy during that fine-tuning, the paper's teacher
    signal; 0 = labels only)."""

    fuse_bn: bool = False
    refit: bool = True
    polish_sweeps: int = 1
    layer_finetune_steps: int = 0
    layer_finetune_lr: float = 1e-4
    global_distill_steps: int = 0
    global_distill_lr: float = 1e-4
    finetune_epochs: float = 0.0
    finetune_lr: float = 1e-3
    finetune_distill: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if min(self.layer_finetune_steps, self.global_distill_steps, self.finetune_epochs, self.polish_sweeps) < 0:
            raise UserError("layer_finetune_steps, global_distill_steps, finetune_epochs and polish_sweeps "
                            "must be >= 0")
        if self.finetune_distill < 0:
            raise UserError(f"finetune_distill must be >= 0, got {self.finetune_distill}")
        if min(self.layer_finetune_lr, self.global_distill_lr, self.finetune_lr) <= 0:
            raise UserError("layer_finetune_lr, global_distill_lr and finetune_lr must be > 0")


def block_size_for(layer: nn.Module, cfg: KMeansConfig) -> int:
    """The configured d for this layer type, reduced to the largest divisor of the row length."""
    if isinstance(layer, nn.Conv2d):
        wanted = cfg.block_conv1x1 if tuple(layer.kernel_size) == (1, 1) else cfg.block_conv3x3
    else:
        wanted = cfg.block_linear
    row = layer.weight[0].numel()
    return max(size for size in range(1, min(wanted, row) + 1) if row % size == 0)


def block_metrics(hessian: torch.Tensor, shape, block_size: int, layout: str, out_per_group: int):
    """Per-block metric H_j (out, n_blocks, d, d): H's diagonal blocks in the blocks' column order."""
    groups, dim, _ = hessian.shape
    if layout == "channel" and len(shape) == 4:
        _, cin, kh, kw = shape
        perm = torch.arange(dim).reshape(cin, kh, kw).permute(1, 2, 0).reshape(-1)  # blocked col -> col
        hessian = hessian[:, perm][:, :, perm]
    n_blocks = dim // block_size
    h = hessian.reshape(groups, n_blocks, block_size, n_blocks, block_size)
    diag = torch.diagonal(h, dim1=1, dim2=3).permute(0, 3, 1, 2)  # (G, n_blocks, d, d)
    return diag.repeat_interleave(out_per_group, dim=0)  # (out, n_blocks, d, d)


def quantize_layer(layer: nn.Module, hessian, cfg: KMeansConfig, damp: float):
    """PQ codes (out, n_blocks) and codebook (S, K, d) of one layer; H None = weight-space k-means."""
    weight = layer.weight.detach().to(torch.float64)
    block_size = block_size_for(layer, cfg)
    blocks = pq_blocks(weight, block_size, cfg.layout)  # (out, n_blocks, d)
    out, n_blocks, _ = blocks.shape
    n_sub = cfg.n_subspaces if n_blocks % cfg.n_subspaces == 0 else 1
    metrics = None
    if hessian is not None:
        regular = hess.regularize(hessian, damp)
        metrics = block_metrics(regular, weight.shape, block_size, cfg.layout, out // hessian.shape[0])
    per_sub = n_blocks // n_sub
    n_centroids = min(cfg.n_centroids, out * per_sub)
    codes = torch.empty(out, n_blocks, dtype=torch.long)
    codebook = torch.empty(n_sub, n_centroids, block_size, dtype=torch.float64)
    history = []
    for s in range(n_sub):
        cols = slice(s * per_sub, (s + 1) * per_sub)
        vectors = blocks[:, cols].reshape(-1, block_size)  # (out * per_sub, d)
        w = None if metrics is None else metrics[:, cols].reshape(-1, block_size, block_size)
        centroids, sub_codes, hist = weighted_kmeans(vectors, w, n_centroids, cfg.iterations, cfg.seed + s)
        codebook[s] = centroids
        codes[:, cols] = sub_codes.reshape(out, per_sub)
        history.append(hist)
    encoded = EncodedWeight("pq", tuple(weight.shape), codes=codes.to(torch.int32),
                            params={"codebook": as_stored(codebook.float(), cfg)}, layout=cfg.layout)
    return encoded, history


def as_stored(codebook: torch.Tensor, cfg: KMeansConfig) -> torch.Tensor:
    """The codebook as the packed file keeps it: float16 values (in a float32 tensor) if configured."""
    return codebook.half().float() if cfg.codebook_fp16 else codebook.float()


class _PQTrainable(nn.Module):
    """A conv/linear whose weight is decoded from a learnable codebook on every forward."""

    def __init__(self, layer: nn.Module, encoded: EncodedWeight):
        super().__init__()
        self.layer, self.encoded = layer, encoded
        self.codebook = nn.Parameter(encoded.params["codebook"].clone())

    def decoded(self) -> torch.Tensor:
        enc = dataclasses.replace(self.encoded, params={"codebook": self.codebook})
        return enc.dequantize()

    def forward(self, x):
        layer, weight = self.layer, self.decoded()
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(x, weight, layer.bias)

    def finish(self, cfg: KMeansConfig) -> tuple[nn.Module, EncodedWeight]:
        encoded = dataclasses.replace(self.encoded, params={"codebook": as_stored(self.codebook.detach(), cfg)})
        self.layer.weight.data.copy_(encoded.dequantize())
        return self.layer, encoded


class _CodebookGroups(Hook):
    """Global fine-tuning: the optimizer gets the codebooks, BatchNorm affine parameters and biases."""

    def __init__(self, params):
        self.params = params

    def param_groups(self, trainer, model):
        return [{"params": self.params}]


@register_method("kmeans", KMeansConfig)
class KMeansPQ(LayerwiseMethod):
    """Baseline for PQ: weight-space k-means of the same blocks with the same K (no activations)."""

    needs_hessian = False

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        encoded, history = quantize_layer(layer, hessian, cfg, self.config.damp)
        info = {"n_centroids": encoded.params["codebook"].shape[1], "block_size": encoded.params["codebook"].shape[2]}
        return LayerSolution(weight, encoded, info)


@register_method("pq", PQConfig)
class PQ(KMeansPQ):
    """PQ with activation-weighted k-means and distillation (Stock et al. 2020); see the module docstring."""

    needs_hessian = True

    def __init__(self, recipe, layers):
        super().__init__(recipe, layers)
        self.fused: dict = {}  # layers whose BatchNorm was folded in (fuse_bn): their bias trains too

    def training_epochs(self) -> float:
        """The global fine-tune on labelled data (`finetune_epochs`), PQ's only use of the training set."""
        return self.config.finetune_epochs

    def solve(self, name, layer, weight, hessian, cfg) -> LayerSolution:
        solution = super().solve(name, layer, weight, hessian, cfg)
        if cfg.refit:
            damped = hess.regularize(hessian, self.config.damp)
            before = hess.reconstruction_error(damped, solution.encoded.dequantize().double().reshape(weight.shape) - weight)
            refit = refit_codebook(solution.encoded, weight, damped)
            if cfg.polish_sweeps:
                refit = refit_codebook(polish_assignments(refit, weight, damped, cfg.polish_sweeps), weight, damped)
            refit = dataclasses.replace(refit, params={"codebook": as_stored(refit.params["codebook"], cfg)})
            after = hess.reconstruction_error(damped, refit.dequantize().double().reshape(weight.shape) - weight)
            if after < before:
                solution.encoded = refit
            solution.info.update(error_em=before.item(), error=min(before, after).item())
        return solution

    @property
    def needs_reference(self) -> bool:
        return self.config.global_distill_steps > 0 or self.config.finetune_distill > 0 or \
            any(cfg.layer_finetune_steps > 0 for cfg in self.layer_configs.values())

    def prepare(self, model, batches):
        self.fused = {}
        if self.config.fuse_bn:
            self.fused = fold_batchnorm(model, list(self.layer_configs), batches[0])
        return model

    def after_layer(self, model, name, batches) -> None:
        cfg = self.layer_configs[name]
        if cfg.layer_finetune_steps <= 0:
            return
        if self._teacher_outputs is None:
            self._teacher_outputs = outputs_of(self.reference, batches)
        trainable = _PQTrainable(model.get_submodule(name), self.encodings[name])
        set_module(model, name, trainable)
        params = [trainable.codebook] + ([trainable.layer.bias] if name in self.fused else [])
        distill(model, batches, self._teacher_outputs, params, cfg.layer_finetune_steps, cfg.layer_finetune_lr)
        layer, self.encodings[name] = trainable.finish(cfg)
        set_module(model, name, layer)

    def finish(self, model, batches, ctx) -> None:
        if self.config.global_distill_steps > 0:
            teacher = self._teacher_outputs or outputs_of(self.reference, batches)
            trainables, params = self._make_trainable(model)
            distill(model, batches, teacher, params, self.config.global_distill_steps, self.config.global_distill_lr)
            self._finish_trainable(model, trainables)
        if self.config.finetune_epochs > 0:
            if ctx.train_data is None:
                raise UserError("pq finetune_epochs > 0 needs training data (train_data=...)")
            trainables, params = self._make_trainable(model)
            train_cfg = dataclasses.replace(ctx.train, epochs=self.config.finetune_epochs, lr=self.config.finetune_lr)
            hooks = [_CodebookGroups(params)]
            if self.config.finetune_distill > 0:
                # KL(teacher || student) with the original network as teacher (Stock et al. 2020 fine-tune
                # the centroids by distillation from it)
                hooks.append(Distillation(self.reference, self.config.finetune_distill))
            ctx.fit(model, hooks=hooks, config=train_cfg)
            model.eval()
            self._finish_trainable(model, trainables)
        unfold_bias(model, self.fused)

    def _make_trainable(self, model):
        """Swap every PQ layer for a `_PQTrainable`; returns them and the global parameters: codebooks,
        BatchNorm affine parameters and biases (Stock et al. 2020, Sec. 3.3, global fine-tuning)."""
        trainables = {n: _PQTrainable(model.get_submodule(n), e) for n, e in self.encodings.items()}
        for n, t in trainables.items():
            set_module(model, n, t)
        params = [t.codebook for t in trainables.values()]
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                params += [m.weight, m.bias]
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                params.append(m.bias)
        return trainables, params

    def _finish_trainable(self, model, trainables) -> None:
        for n, t in trainables.items():
            layer, self.encodings[n] = t.finish(self.layer_configs[n])
            set_module(model, n, layer)
