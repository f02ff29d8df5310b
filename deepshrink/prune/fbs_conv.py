"""FBS inference form for a gated conv outside a residual block (LeNet, VGG, NIN, your own convs).

A gated conv whose block cannot become an `FBSBlock` (fbs_infer.py) becomes an `FBSConv`: per sample
it predicts the saliencies g(x) = ReLU(phi mean|x| + rho), keeps the k = ceil(d C_out) largest
(winner-take-all, FBS Sec. 3), and computes ONLY those k output channels: their weight rows
(BatchNorm folded in when the conv had one) are gathered per sample and the whole batch runs as one
grouped convolution (groups = batch), so a sample costs k * C_in * kh * kw * H' * W' MACs instead of
C_out * C_in * kh * kw * H' * W'. The suppressed channels are written as zeros without being computed.
Fewer MACs is not always less time: on a tiny conv (LeNet-5's 6 -> 16) the gather and the scatter cost
more than the saved MACs on a CPU; on wide convs (128+ channels) keeping half is faster than dense.

What is NOT skipped: the input channels. The layer after a standalone gated conv is arbitrary (a ReLU,
a pool, a flatten into a Linear), so this module returns a dense (N, C_out, H', W') tensor with zeros
in the suppressed channels, and the next layer reads all of them. (`FBSBlock` also skips the reads
inside a residual block, where it knows the next layer.)

`forward` compiles with TorchScript (`fbs_infer.script_for_latency` scripts a whole model).

The BatchNorm that followed a gated conv is folded into it; its slot holds a `FoldedNorm` (an identity
that `deepshrink.pack` / `deepshrink.load` know how to rebuild).

Example::

    layer = FBSConv.from_gate(gated_conv)   # gated_conv: an FBSGatedConv (training form)
    y = layer(x)                            # == layer.dense_forward(x); ceil(d C_out) nonzero channels
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import as_hw
from ..nn import Packable
from ..registry import register_packable
from .fbs_gate import FBSGatedConv, channel_saliency_input, kept_channels, winner_take_all
from .fbs_infer import fold_bn

# Gathered weights of one grouped-conv call hold at most this many elements (64 MiB in fp32); larger
# batches run in chunks, so a wide conv (512 x 512 x 3 x 3) at batch 128 does not gather 600 MB at once.
GATHER_BUDGET = 1 << 24


@register_packable("fbs_folded_norm")
class FoldedNorm(Packable, nn.Identity):
    """Placeholder for a BatchNorm folded into the FBS-gated conv before it: passes its input through."""

    def pack_config(self) -> dict:
        return {}


@register_packable("fbs_conv")
class FBSConv(Packable, nn.Module):
    """One FBS-gated conv that computes only the kept output channels of each sample.

    Buffers: `weight` (C_out, C_in, kh, kw) and `bias` (C_out,) with the BatchNorm (if any) folded in,
    `phi` (C_out, C_in) and `rho` (C_out,) of the saliency predictor. Output: (N, C_out, H', W') where
    channel c of sample n is pi_c(x_n) * (W'_c * x_n + b'_c) if c is among the sample's k kept channels
    and exactly 0 otherwise (FBS Sec. 3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 keep_ratio: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = as_hw(kernel_size)
        self.stride, self.dilation = as_hw(stride), as_hw(dilation)
        self.padding = padding if isinstance(padding, str) else as_hw(padding)
        self.keep_ratio = float(keep_ratio)
        self.register_buffer("weight", torch.zeros(self.out_channels, self.in_channels, *self.kernel_size))
        self.register_buffer("bias", torch.zeros(self.out_channels))
        self.register_buffer("phi", torch.zeros(self.out_channels, self.in_channels))
        self.register_buffer("rho", torch.zeros(self.out_channels))

    @classmethod
    def from_gate(cls, gate: FBSGatedConv) -> "FBSConv":
        """Build from the training form: fold the BN (if any) into the conv, copy the predictor."""
        conv = gate.conv
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, gate.keep_ratio)
        with torch.no_grad():
            weight, bias = fold_bn(conv, gate.bn)
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            layer.phi.copy_(gate.predictor.weight)
            layer.rho.copy_(gate.predictor.bias)
        return layer.to(conv.weight.device)

    def pack_config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=self.padding if isinstance(self.padding, str) else list(self.padding),
                    dilation=list(self.dilation), keep_ratio=self.keep_ratio)

    @property
    def n_kept(self) -> int:
        return kept_channels(self.out_channels, self.keep_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return self.dense_forward(x)
        g = F.relu(F.linear(channel_saliency_input(x), self.phi, self.rho))  # (N, C_out)
        gate, index = g.topk(self.n_kept, dim=1)  # (N, k), (N, k)
        per_sample = self.n_kept * self.weight[0].numel()
        if torch.jit.is_scripting():  # TorchScript reads no module globals; the default budget
            budget = 1 << 24
        else:
            budget = GATHER_BUDGET
        chunk = max(1, budget // per_sample)
        return torch.cat([self._kept_only(x[i : i + chunk], gate[i : i + chunk], index[i : i + chunk])
                          for i in range(0, x.shape[0], chunk)])

    def _kept_only(self, x: torch.Tensor, gate: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Compute the kept channels of each sample in one grouped conv, scatter them into zeros."""
        n, k = index.shape
        weight = self.weight[index].reshape(n * k, self.in_channels, self.kernel_size[0],  # (n k, C_in, kh, kw)
                                            self.kernel_size[1])
        bias = self.bias[index].reshape(n * k)  # (n k,)
        y = F.conv2d(x.reshape(1, n * self.in_channels, x.shape[2], x.shape[3]), weight, bias,  # (1, n k, H', W')
                     self.stride, self.padding, self.dilation, groups=n)
        y = y.view(n, k, y.shape[2], y.shape[3]) * gate[:, :, None, None]  # (n, k, H', W')
        out = y.new_zeros(n, self.out_channels, y.shape[2], y.shape[3])  # (n, C_out, H', W')
        return out.scatter_(1, index[:, :, None, None].expand_as(y), y)

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function computed densely, then masked (the training-form semantics)."""
        gate = winner_take_all(F.relu(F.linear(channel_saliency_input(x), self.phi, self.rho)), self.n_kept)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)  # (N, C_out, H', W')
        return y * gate[:, :, None, None]

    def deepshrink_macs(self, inputs, output) -> int:
        """MACs of this batch as executed: per sample, k kept outputs x all inputs x kernel x positions,
        plus the predictor's C_out x C_in."""
        n, _, h_out, w_out = output.shape
        per_output = self.in_channels * self.kernel_size[0] * self.kernel_size[1] * h_out * w_out
        return int(n * (self.n_kept * per_output + self.out_channels * self.in_channels))
