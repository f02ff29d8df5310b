"""FBS inference form: a residual block that computes only the channels its gates keep.

For each sample, gate l picks its k_l = ceil(d C_l) channels (FBS Sec. 3); the conv then runs on the
gathered weight W_l[kept_l][:, kept_{l-1}] with BN folded in and the gate value folded into the
per-channel scale, so layer l costs k_l * k_{l-1} * kh * kw * H * W MACs instead of C_l * C_{l-1} * ...
(FBS Sec. 3: suppressed output channels are neither computed nor read by the next layer). The last conv's
kept channels are added into the shortcut with `index_add`.

At batch 1, the case FBS speeds up, `skip_forward` runs the sample alone; a larger batch stacks the
per-sample gathered weights into one grouped conv (`skip_forward_batch`, groups = N). `dense_forward`
computes the same result by masking a dense computation and is what the tests compare against.

At batch 1 on a CPU each op runs on a tiny tensor, so the per-op overhead rivals the MACs; for latency,
compile the whole converted model with `script_for_latency` (TorchScript + freeze: no Python between
blocks, and the stem's BatchNorm folded into its conv), which computes the same function. Stride-1
gathered convs on maps of at least NNPACK_MIN_PIXELS pixels run on NNPACK (Winograd), which at batch 1
beats PyTorch's default im2col + GEMM there (PyTorch itself picks NNPACK only for batches of 16+).

Example::

    block = FBSBlock.from_block(basic_block)   # a BasicBlock whose convs are FBSGatedConv
    y = block(x)                               # == block.dense_forward(x)
    fast = script_for_latency(convert_fbs(model))   # fast(x) == model(x), less overhead per call
"""
from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nn import Packable
from ..registry import register_packable
from .fbs_gate import FBSGatedConv, channel_saliency_input, kept_channels, winner_take_all


def fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """BN folded into the conv: W' = W * gamma / sigma, b' = beta + (b - mu) * gamma / sigma.

    Without a BatchNorm (`bn` None or an Identity): the conv's own weight and bias (zeros if it has none).
    """
    bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    if not isinstance(bn, nn.BatchNorm2d):
        return conv.weight, bias
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)  # affine=False: 1, 0
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    return conv.weight * scale[:, None, None, None], beta + (bias - bn.running_mean) * scale


# Winograd (NNPACK) beats im2col + GEMM for a batch-1 stride-1 conv only on large feature maps: measured
# on one AVX-512 thread (ResNet-20 kept-channel shapes), 16->8 at 32x32 52 vs 88 us, 32->16 at 16x16 42 vs
# 68 us, but 64->32 at 8x8 93 vs 66 us and stride 2 slower too. Fixed rule: output at least this many pixels.
NNPACK_MIN_PIXELS = 256


def conv_uses_nnpack(stride: int, weight: torch.Tensor) -> bool:
    """Whether a stage's gathered conv may run on NNPACK: this build has it, the conv is stride 1, and the
    weight is fp32 on the CPU (NNPACK's only case); `skip_forward` adds the feature-map size rule.

    `is_available()` also initialises NNPACK, without which its conv op fails: every FBSBlock calls this
    when it is built or moved, before any forward."""
    return (stride == 1 and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and torch.backends.nnpack.is_available())


def skip_forward(x: torch.Tensor, weights: List[torch.Tensor], biases: List[torch.Tensor], phis: List[torch.Tensor],
                 phis_t: List[torch.Tensor], rhos: List[torch.Tensor], strides: List[int], paddings: List[int],
                 kept: List[int], nonneg_input: bool, shortcut: torch.Tensor,
                 nnpack_min_pixels: List[int]) -> torch.Tensor:
    """One sample (1, C, H, W) through a gated chain: per stage, gather kept rows (outputs) and kept
    columns (inputs), conv, scale by the gate; then add into the shortcut's kept channels and ReLU.

    Written for batch-1 latency, where each op runs on a tiny tensor and the number of ops matters as
    much as the MACs: s(x) is a 1-D sum over (N, H, W) with 1/HW folded into addmv's alpha (no (1, C)
    rows to select from), ReLU is in place before topk, the weight gathers go rows first (the second
    gather then reads k rows, not C), the gate scales the conv output in place. Where the feature map has
    at least `nnpack_min_pixels[i]` pixels (-1: never; see `conv_uses_nnpack`), the conv runs on NNPACK
    (Winograd: the same conv up to fp32 rounding) instead of im2col + GEMM.
    (TorchScript-compiled below when available.)
    """
    h = x
    kept_in = torch.zeros(0, dtype=torch.long, device=x.device)
    last = len(weights) - 1
    for i in range(len(weights)):
        alpha = 1.0 / float(h.shape[2] * h.shape[3])
        if i > 0:  # h is a ReLU output here, so |h| = h; read only the kept input channels
            s = h.sum([0, 2, 3])  # (k_in,)
            phi = phis_t[i].index_select(0, kept_in).t()  # (C_out, k_in)
        else:
            s = h.sum([0, 2, 3]) if nonneg_input else h.abs().sum([0, 2, 3])  # (C_in,)
            phi = phis[i]  # (C_out, C_in)
        g = torch.addmv(rhos[i], phi, s, beta=1.0, alpha=alpha).relu_()  # (C_out,)
        gate, index = g.topk(kept[i])  # (k,), (k,)
        weight = weights[i].index_select(0, index)  # (k, C_in, kh, kw)
        if i > 0:
            weight = weight.index_select(1, kept_in)  # (k, k_in, kh, kw)
        bias = biases[i].index_select(0, index)
        min_pixels = nnpack_min_pixels[i]  # -1: never; stride 1, so the output map is the input's size
        if min_pixels >= 0 and h.shape[2] * h.shape[3] >= min_pixels:
            h = torch._nnpack_spatial_convolution(h, weight, bias, [paddings[i], paddings[i]], [1, 1])
        else:
            h = F.conv2d(h, weight, bias, [strides[i], strides[i]], [paddings[i], paddings[i]])
        h.mul_(gate.view(-1, 1, 1))  # (1, k, H', W')
        if i < last:
            h.relu_()
        kept_in = index
    return shortcut.index_add(1, kept_in, h).relu_()  # (1, C_out, H', W')


def skip_forward_batch(x: torch.Tensor, weights: List[torch.Tensor], biases: List[torch.Tensor],
                       phis_t: List[torch.Tensor], rhos: List[torch.Tensor], strides: List[int],
                       paddings: List[int], kept: List[int], nonneg_input: bool,
                       shortcut: torch.Tensor) -> torch.Tensor:
    """N samples (N, C, H, W) at once, each still computing only its own kept channels: the per-sample
    gathered weights are stacked into one grouped conv (groups = N), so a batch costs the MACs of N
    batch-1 calls without N rounds of per-op overhead (`deepshrink eval` on a test set, say).
    """
    n = x.shape[0]
    h = x
    kept_in = torch.zeros(0, dtype=torch.long, device=x.device)
    last = len(weights) - 1
    for i in range(len(weights)):
        kh, kw = weights[i].shape[2], weights[i].shape[3]
        if i > 0:  # h is a ReLU output: |h| = h; each sample's predictor reads its kept inputs only
            phi = phis_t[i][kept_in]  # (N, k_in, C_out)
            g = torch.baddbmm(rhos[i].expand(n, 1, -1), h.mean([2, 3]).unsqueeze(1), phi).squeeze(1).relu()
        else:
            s = h.mean([2, 3]) if nonneg_input else h.abs().mean([2, 3])  # (N, C_in)
            g = torch.addmm(rhos[i], s, phis_t[i]).relu()  # (N, C_out)
        gate, index = g.topk(kept[i], dim=1)  # (N, k), (N, k)
        weight = weights[i][index]  # (N, k, C_in, kh, kw)
        if i > 0:
            weight = weight.gather(2, kept_in[:, None, :, None, None].expand(n, kept[i], kept_in.shape[1], kh, kw))
        bias = biases[i][index]  # (N, k)
        c_in = weight.shape[2]
        h = F.conv2d(h.reshape(1, n * c_in, h.shape[2], h.shape[3]),  # (1, N * k_in, H, W)
                     weight.reshape(n * kept[i], c_in, kh, kw), bias.reshape(-1),
                     [strides[i], strides[i]], [paddings[i], paddings[i]], [1, 1], n)
        h = h.reshape(n, kept[i], h.shape[2], h.shape[3]) * gate[:, :, None, None]  # (N, k, H', W')
        if i < last:
            h = h.relu()
        kept_in = index
    index = kept_in[:, :, None, None].expand(n, kept_in.shape[1], h.shape[2], h.shape[3])
    return shortcut.scatter_add(1, index, h).relu()  # (N, C_out, H', W')


try:  # TorchScript removes Python's per-op overhead (~10% of a batch-1 block); optional
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated, still works
        _skip_forward = torch.jit.script(skip_forward)
        _skip_forward_batch = torch.jit.script(skip_forward_batch)
except Exception:  # noqa: BLE001  (any scripting failure: the eager functions compute the same)
    _skip_forward, _skip_forward_batch = skip_forward, skip_forward_batch


@register_packable("fbs_block")
class FBSBlock(Packable, nn.Module):
    """A chain of FBS-gated convs (ReLU between them) plus a shortcut: y = relu(chain(x) + shortcut(x)).

    Buffers per stage i: `weight{i}` (C_out, C_in, kh, kw) and `bias{i}` (C_out,) with BN folded in,
    `phi{i}` (C_out, C_in) and `rho{i}` (C_out,) of the saliency predictor. The shortcut is one of
    "identity", "projection" (1x1 conv + BN, folded into `shortcut_weight`/`shortcut_bias`) or
    "zero_pad" (option A: subsample, then zero channels split evenly on both sides).

    `forward` is TorchScript-compatible, so a converted model scripts whole (see `script_for_latency`):
    the per-stage tensors are also held in lists (`_weights`, ...; TorchScript cannot look buffers up
    by a computed name), rebuilt whenever the buffers change (`_refresh`).
    """

    def __init__(self, stages: list[dict], shortcut: str = "identity", stride: int = 1,
                 in_channels: int = 0, out_channels: int = 0, nonneg_input: bool = False):
        super().__init__()
        self.nonneg_input = bool(nonneg_input)  # input is a ReLU output: mean |x| = mean x
        self.stages = [dict(s) for s in stages]  # {in, out, kernel, stride, padding, keep_ratio}
        self.shortcut = shortcut
        self.stride = int(stride)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        for i, s in enumerate(self.stages):
            kh = kw = int(s["kernel"])
            self.register_buffer(f"weight{i}", torch.zeros(s["out"], s["in"], kh, kw))
            self.register_buffer(f"bias{i}", torch.zeros(s["out"]))
            self.register_buffer(f"phi{i}", torch.zeros(s["out"], s["in"]))
            self.register_buffer(f"rho{i}", torch.zeros(s["out"]))
        if shortcut == "projection":
            self.register_buffer("shortcut_weight", torch.zeros(self.out_channels, self.in_channels, 1, 1))
            self.register_buffer("shortcut_bias", torch.zeros(self.out_channels))
        self._refresh()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_block(cls, block: nn.Module) -> "FBSBlock":
        """Build from a ResNet Basic/Bottleneck block whose conv1..convN are `FBSGatedConv`s."""
        gates = []
        for i in range(1, 4):
            gate = getattr(block, f"conv{i}", None)
            if gate is None:
                break
            if not isinstance(gate, FBSGatedConv):
                raise ValueError(f"conv{i} of the block is not FBS-gated")
            gates.append(gate)
        shortcut_module = getattr(block, "downsample", None)
        shortcut, stride = "identity", 1
        if isinstance(shortcut_module, nn.Sequential):
            shortcut, stride = "projection", shortcut_module[0].stride[0]
        elif shortcut_module is not None and hasattr(shortcut_module, "extra"):
            shortcut, stride = "zero_pad", shortcut_module.stride
        elif shortcut_module is not None:
            raise ValueError(f"unsupported shortcut {type(shortcut_module).__name__}")
        stages = [dict(**{"in": g.conv.in_channels}, out=g.conv.out_channels, kernel=g.conv.kernel_size[0],
                       stride=g.conv.stride[0], padding=g.conv.padding[0], keep_ratio=g.keep_ratio)
                  for g in gates]
        # ResNet blocks read the ReLU output of the stem or of the previous block: x >= 0
        block_fbs = cls(stages, shortcut, stride, gates[0].conv.in_channels, gates[-1].conv.out_channels,
                        nonneg_input=True)
        with torch.no_grad():
            for i, g in enumerate(gates):
                weight, bias = fold_bn(g.conv, g.bn)
                getattr(block_fbs, f"weight{i}").copy_(weight)
                getattr(block_fbs, f"bias{i}").copy_(bias)
                getattr(block_fbs, f"phi{i}").copy_(g.predictor.weight)
                getattr(block_fbs, f"rho{i}").copy_(g.predictor.bias)
            if shortcut == "projection":
                weight, bias = fold_bn(shortcut_module[0], shortcut_module[1])
                block_fbs.shortcut_weight.copy_(weight)
                block_fbs.shortcut_bias.copy_(bias)
        block_fbs._refresh()  # phi^T is a copy of phi
        return block_fbs.to(gates[0].conv.weight.device)

    def pack_config(self) -> dict:
        return dict(stages=self.stages, shortcut=self.shortcut, stride=self.stride,
                    in_channels=self.in_channels, out_channels=self.out_channels, nonneg_input=self.nonneg_input)

    def _kept_count(self, i: int) -> int:
        return kept_channels(self.stages[i]["out"], self.stages[i]["keep_ratio"])

    def _refresh(self) -> None:
        """Rebuild the per-stage lists from the buffers (after construction, .to(), load_state_dict)."""
        n = len(self.stages)
        self._weights = [getattr(self, f"weight{i}") for i in range(n)]
        self._biases = [getattr(self, f"bias{i}") for i in range(n)]
        self._phis = [getattr(self, f"phi{i}") for i in range(n)]
        # rows of phi^T are phi's columns: gathering the kept inputs' columns is then a row copy
        self._phis_t = [getattr(self, f"phi{i}").t().contiguous() for i in range(n)]
        self._rhos = [getattr(self, f"rho{i}") for i in range(n)]
        self._strides = [int(s["stride"]) for s in self.stages]
        self._paddings = [int(s["padding"]) for s in self.stages]
        self._kept = [self._kept_count(i) for i in range(n)]
        self._nnpack_min_pixels = [NNPACK_MIN_PIXELS if conv_uses_nnpack(self._strides[i], self._weights[i])
                                   else -1 for i in range(n)]
        # never an empty list, whose element type TorchScript could not infer
        self._shortcut_params = ([self.shortcut_weight, self.shortcut_bias] if self.shortcut == "projection"
                                 else [self.weight0.new_zeros(0)])

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)  # .to() / .float() replace the buffers
        self._refresh()
        return module

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()  # phi^T is derived from phi

    # ------------------------------------------------------------------ forward
    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut == "projection":
            return F.conv2d(x, self._shortcut_params[0], self._shortcut_params[1], self.stride)
        if self.shortcut == "zero_pad":
            x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H / s, W / s)
            extra = self.out_channels - self.in_channels
            return F.pad(x, [0, 0, 0, 0, extra // 2, extra - extra // 2])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self._shortcut(x)
        if x.shape[0] == 1:
            return _skip_forward(x, self._weights, self._biases, self._phis, self._phis_t, self._rhos,
                                 self._strides, self._paddings, self._kept, self.nonneg_input, shortcut,
                                 self._nnpack_min_pixels)
        return _skip_forward_batch(x, self._weights, self._biases, self._phis_t, self._rhos, self._strides,
                                   self._paddings, self._kept, self.nonneg_input, shortcut)

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function computed densely with masked channels (the training-form semantics)."""
        h = x
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            g = F.relu(F.linear(channel_saliency_input(h), getattr(self, f"phi{i}"), getattr(self, f"rho{i}")))
            gate = winner_take_all(g, self._kept_count(i))  # (N, C_out)
            h = F.conv2d(h, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"), stage["stride"],
                         stage["padding"]) * gate[:, :, None, None]
            if i < last:
                h = F.relu(h)
        return F.relu(self._shortcut(x) + h)

    # ------------------------------------------------------------------ accounting
    def macs_per_sample(self, input_hw: tuple[int, int]) -> int:
        """MACs one sample costs when skipping: predictors + gathered convs + shortcut projection."""
        h, w = input_hw
        total, k_in = 0, self.in_channels
        for i, s in enumerate(self.stages):
            h = (h + 2 * s["padding"] - s["kernel"]) // s["stride"] + 1
            w = (w + 2 * s["padding"] - s["kernel"]) // s["stride"] + 1
            k_out = self._kept_count(i)
            total += s["out"] * k_in  # saliency predictor reads only the kept inputs
            total += k_out * k_in * s["kernel"] ** 2 * h * w
            k_in = k_out
        if self.shortcut == "projection":
            total += self.out_channels * self.in_channels * h * w
        return total

    def deepshrink_macs(self, inputs, output) -> int:
        """MACs of this batch as executed (see `macs_per_sample`)."""
        x = inputs[0]
        return int(x.shape[0] * self.macs_per_sample(tuple(x.shape[2:])))


def script_for_latency(model: nn.Module) -> torch.jit.ScriptModule:
    """The whole model compiled with TorchScript and frozen, for batch-1 CPU latency.

    The same function as `model` (eval mode): scripting removes Python's per-module and per-call
    overhead between the blocks, and freezing inlines the buffers as constants and folds any
    conv -> BatchNorm pair left outside the blocks (the stem) into one conv. The result is a frozen
    copy (later changes to `model` do not reach it) and is not packable: pack the eager model and
    compile it after `deepshrink.load`. It runs batch 1 faster than the eager converted model
    (measured on ResNet-20 at keep ratio 0.5: benchmarks/results/fbs_cifar10_*_latency.json, `fbs`
    against `fbs_eager`; the fbs-cifar10 bench suite's `batch1_latency` measures it per row). Example::

        fast = script_for_latency(deepshrink.load("fbs.dsz"))
        logits = fast(image[None])    # (1, num_classes)
    """
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated, still works
            return torch.jit.freeze(torch.jit.script(model))
    except Exception as error:  # noqa: BLE001  (TorchScript raises many types; report the first line)
        raise UserError(f"script_for_latency: {type(model).__name__} does not compile with TorchScript "
                        f"({str(error).strip().splitlines()[0]}); run the eager model instead") from error

