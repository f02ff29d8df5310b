"""What a traced graph in a `.dsz` may name: the allow-lists `deepshrink.packing.graph` records and rebuilds.

Functions (call_function targets), tensor methods (call_method), attributes `getattr` may read, dtypes,
and leaf module types with the constructor arguments read back from each module. A file naming anything
outside these tables is refused; growing the vocabulary means adding an entry here and nothing else.
"""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import attend


def _table(namespace, prefix: str, names: str) -> dict[str, object]:
    return {f"{prefix}.{name}": getattr(namespace, name) for name in names.split() if hasattr(namespace, name)}


# call_function targets, by the name the file records
FUNCTIONS: dict[str, object] = {
    **_table(operator, "operator", "add sub mul truediv floordiv mod pow neg pos matmul getitem "
                                   "eq ne lt le gt ge iadd isub imul itruediv"),
    "builtins.getattr": builtins.getattr,
    **_table(torch, "torch", "flatten cat concat stack add sub mul div matmul bmm mm relu sigmoid tanh softmax "
                             "log_softmax mean sum amax amin reshape transpose permute squeeze unsqueeze chunk "
                             "split sqrt rsqrt exp log abs clamp neg pow erf where zeros_like ones_like einsum "
                             "addmm baddbmm"),
    **_table(F, "torch.nn.functional", "relu relu6 gelu silu hardswish hardsigmoid leaky_relu elu mish "
                                       "softmax log_softmax adaptive_avg_pool1d adaptive_avg_pool2d "
                                       "adaptive_max_pool2d avg_pool2d max_pool2d dropout pad interpolate "
                                       "layer_norm group_norm batch_norm linear conv1d conv2d normalize "
                                       "scaled_dot_product_attention embedding sigmoid tanh"),
    # SplitAttention's core between its projections, recorded as one call (deepshrink.nn.attention)
    "deepshrink.nn.attention.attend": attend,
}
_FUNCTION_NAMES = {id(fn): name for name, fn in reversed(FUNCTIONS.items())}  # first name wins
WRAPPED = (attend,)  # deepshrink's own functions in FUNCTIONS: FX records each as one call

# call_method names: tensor methods that compute, never ones that reach outside the tensor
METHODS = frozenset("""view reshape flatten mean sum size dim numel permute transpose contiguous unsqueeze squeeze
    expand expand_as view_as reshape_as repeat chunk split unbind narrow flip roll add sub mul div matmul
    add_ mul_ relu relu_ sigmoid sigmoid_ tanh softmax log_softmax exp sqrt rsqrt pow abs neg clamp clamp_
    clamp_min max min amax amin std var t clone float type_as to masked_fill sign erf norm cumsum""".split())

# attributes `builtins.getattr` may read (FX records `x.shape` as getattr(x, "shape"))
GETATTR_NAMES = frozenset({"shape", "ndim", "dtype", "device", "T"})

DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool)}

_CONV = "in_channels out_channels kernel_size stride padding dilation groups padding_mode"
# leaf module type -> (class, constructor arguments read back from the module's attributes);
# `bias` is a flag derived from the module (bias is not None)
MODULES: dict[str, tuple[type, tuple[str, ...]]] = {cls.__name__: (cls, tuple(args.split())) for cls, args in [
    (nn.Conv1d, _CONV + " bias"), (nn.Conv2d, _CONV + " bias"),
    (nn.ConvTranspose2d, _CONV + " output_padding bias"),
    (nn.Linear, "in_features out_features bias"),
    (nn.BatchNorm1d, "num_features eps momentum affine track_running_stats"),
    (nn.BatchNorm2d, "num_features eps momentum affine track_running_stats"),
    (nn.GroupNorm, "num_groups num_channels eps affine"),
    (nn.LayerNorm, "normalized_shape eps elementwise_affine bias"),
    (nn.Embedding, "num_embeddings embedding_dim padding_idx max_norm norm_type scale_grad_by_freq sparse"),
    (nn.PReLU, "num_parameters"),
    (nn.ReLU, "inplace"), (nn.ReLU6, "inplace"), (nn.SiLU, "inplace"), (nn.GELU, "approximate"),
    (nn.Sigmoid, ""), (nn.Tanh, ""), (nn.Hardswish, "inplace"), (nn.Hardsigmoid, "inplace"),
    (nn.LeakyReLU, "negative_slope inplace"), (nn.ELU, "alpha inplace"), (nn.Mish, "inplace"),
    (nn.Softmax, "dim"), (nn.LogSoftmax, "dim"), (nn.Identity, ""), (nn.Flatten, "start_dim end_dim"),
    (nn.Dropout, "p inplace"), (nn.Dropout2d, "p inplace"),
    (nn.MaxPool2d, "kernel_size stride padding dilation return_indices ceil_mode"),
    (nn.AvgPool2d, "kernel_size stride padding ceil_mode count_include_pad divisor_override"),
    (nn.AdaptiveAvgPool1d, "output_size"), (nn.AdaptiveAvgPool2d, "output_size"),
    (nn.AdaptiveMaxPool2d, "output_size return_indices"),
    (nn.Upsample, "size scale_factor mode align_corners recompute_scale_factor"),
]}
_LEAF_TYPES = {cls for cls, _ in MODULES.values()}
