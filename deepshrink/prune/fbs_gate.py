"""FBS building blocks: the saliency predictor, winner-take-all, and the training-form gated conv.

Feature Boosting and Suppression (Gao, Zhao, Dudziak, Mullins, Xu, "Dynamic Channel Pruning: Feature
Boosting and Suppression", ICLR 2019). For a conv layer l with input x_{l-1} (C_in channels):

    s(x)   = mean_{h,w} |x_{l-1}|                      subsampling ss(.)                  (N, C_in)
    g(x)   = ReLU(phi s(x) + rho)                      saliency predictor                 (N, C_out)
    pi(x)  = wta_{ceil(d C_out)}(g(x))                 winner-take-all: keep the k largest
                                                       saliencies, zero the rest
    f(x)   = (gamma * norm(conv(x)) + beta) * pi(x)    the gate scales the BN output
    f(x)   = conv(x) * pi(x)                           ... or, for a conv no BN follows, the conv
                                                       output itself (bias included)

and the L1 penalty lambda * sum_l ||g_l(x)||_1 keeps saliencies sparse (all in the paper's Sec. 3). Channels with
pi = 0 are not computed at inference: `FBSBlock` (fbs_infer.py) skips them in a residual block, also
skipping the next conv's reads of them, and `FBSConv` (fbs_conv.py) skips them in any other conv.

Example::

    gated = FBSGatedConv(block.conv1, block.bn1, keep_ratio=0.5)
    y = gated(x)            # (N, C_out, H, W), exactly ceil(0.5 * C_out) nonzero channels per sample
    bare = FBSGatedConv(lenet.conv2, None, keep_ratio=0.5)    # a conv with no BN after it
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kept_channels(n_channels: int, keep_ratio: float) -> int:
    """k = ceil(d * C), at least 1: how many output channels winner-take-all keeps per sample.

    A small epsilon guards against float error (0.5 * 64 must give 32, not 33).
    """
    return max(1, min(n_channels, math.ceil(keep_ratio * n_channels - 1e-9)))


def channel_saliency_input(x: torch.Tensor) -> torch.Tensor:
    """s(x) = mean over (H, W) of |x|: (N, C, H, W) -> (N, C) (FBS Sec. 3.3, global subsampling)."""
    return x.abs().mean(dim=(2, 3))


def winner_take_all(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """wta_k (FBS Sec. 3): keep the k largest entries of each row, zero the others.

    Uses `topk`, so exactly k entries per row survive even with ties (a strict `>` against the k-th
    value keeps fewer when values tie). Gradients flow to the kept entries only.
    """
    values, index = saliency.topk(k, dim=1)  # (N, k)
    return torch.zeros_like(saliency).scatter(1, index, values)


class FBSGatedConv(nn.Module):
    """Training form of one FBS layer: conv -> BN -> multiply by pi(x) (FBS Sec. 3).

    `bn` None (a conv no BatchNorm follows) gates the conv output itself: pi(x) * conv(x), so a
    suppressed channel is exactly 0 even when the conv has a bias; `self.bn` is then an Identity.
    `predictor` is phi (weight, (C_out, C_in)) and rho (bias, (C_out,)). `keep_ratio` may change during
    training (the schedule in `FBSHook`). `last_saliency` holds g(x) of the latest forward for the L1
    penalty; `last_gate` holds pi(x).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, keep_ratio: float):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("FBS gates ordinary convolutions only (groups=1)")
        self.conv = conv
        self.bn = bn if bn is not None else nn.Identity()
        self.predictor = nn.Linear(conv.in_channels, conv.out_channels).to(conv.weight.device)
        nn.init.zeros_(self.predictor.weight)  # g = 1 everywhere until calibrated or trained
        nn.init.ones_(self.predictor.bias)
        self.keep_ratio = float(keep_ratio)
        self.last_saliency: torch.Tensor | None = None
        self.last_gate: torch.Tensor | None = None
        self._calibration: list | None = None  # (s, activity) pairs while `calibrate_predictors` runs

    @property
    def n_kept(self) -> int:
        return kept_channels(self.conv.out_channels, self.keep_ratio)

    def saliency(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) = ReLU(phi s(x) + rho) (FBS Sec. 3): (N, C_in, H, W) -> (N, C_out)."""
        return F.relu(self.predictor(channel_saliency_input(x)))

    def forward(self, x):
        y = self.bn(self.conv(x))  # (N, C_out, H, W)
        if self._calibration is not None:  # collecting predictor targets: run dense, ungated
            self._calibration.append((channel_saliency_input(x).detach(), F.relu(y).mean(dim=(2, 3)).detach()))
            return y
        g = self.saliency(x)
        gate = winner_take_all(g, self.n_kept)  # (N, C_out)
        self.last_saliency, self.last_gate = g, gate
        return y * gate[:, :, None, None]

    def fit_predictor(self, ridge: float = 0.1, spread: float = 0.01) -> None:
        """Least-squares init of (phi, rho) from the collected calibration batches.

        Target: g = 1 - spread + spread * a_c(x) / mean(a), where a_c(x) is channel c's mean post-ReLU
        activity on sample x and mean(a) its average over samples and channels. The kept channels
        are then the ones that fire most on this sample, while gates stay near 1 so that the dense
        network's function is roughly preserved (a gate far from 1 rescales every later layer's input
        and the errors compound through the residual chain). `ridge` is relative to the mean diagonal of
        the Gram matrix. Not in the paper, which trains phi, rho
        from scratch; it lets a short fine-tuning budget start from sensible gates.
        """
        s = torch.cat([a for a, _ in self._calibration])  # (N, C_in)
        activity = torch.cat([b for _, b in self._calibration])  # (N, C_out)
        self._calibration = None
        target = 1 - spread + spread * activity / activity.mean().clamp_min(1e-8)  # (N, C_out)
        design = torch.cat([s, torch.ones(len(s), 1, device=s.device)], dim=1)  # (N, C_in + 1)
        gram = design.T @ design  # (C_in + 1, C_in + 1)
        # ridge relative to the features' scale: the channel means are strongly correlated, and an
        # unregularised fit extrapolates wildly once earlier gates shift the input distribution
        gram = gram + ridge * gram.diagonal().mean() * torch.eye(design.shape[1], device=s.device)
        solution = torch.linalg.solve(gram, design.T @ target)  # (C_in + 1, C_out)
        with torch.no_grad():
            self.predictor.weight.copy_(solution[:-1].T)
            self.predictor.bias.copy_(solution[-1])

    def deepshrink_macs(self, inputs, output) -> int:
        """MACs of this batch as executed sparsely: kept outputs x all inputs x kernel x positions."""
        x = inputs[0]
        n, _, h_out, w_out = output.shape
        per_out = self.conv.in_channels * self.conv.kernel_size[0] * self.conv.kernel_size[1] * h_out * w_out
        predictor = self.conv.in_channels * self.conv.out_channels
        return int(x.shape[0] * (self.n_kept * per_out + predictor))


def gated_convs(model: nn.Module) -> list[FBSGatedConv]:
    """Every FBSGatedConv in `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, FBSGatedConv)]


@torch.no_grad()
def calibrate_predictors(model: nn.Module, data, n_batches: int = 8, device=None) -> int:
    """Fit every gate's predictor by least squares on `n_batches` of `data` (see `fit_predictor`).

    Returns the number of samples used. The model runs in eval mode (BN statistics untouched).
    """
    gates = gated_convs(model)
    was_training = model.training
    model.eval()
    for gate in gates:
        gate._calibration = []
    seen = 0
    for i, (inputs, _) in enumerate(data):
        if i >= n_batches:
            break
        model(inputs.to(device) if device is not None else inputs)
        seen += len(inputs)
    for gate in gates:
        if seen:
            gate.fit_predictor()
        gate._calibration = None
    model.train(was_training)
    return seen
