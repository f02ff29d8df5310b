"""Product-quantized weights (Stock et al., "And the Bit Goes Down", ICLR 2020): one code per block of d weights.

codes (out, n_blocks) in 0 .. K-1, codebook (S, K, d); block j of row o decodes to
codebook[j // (n_blocks // S), codes[o, j]]. `layout` says where the blocks sit, for a conv weight
(out, in, kh, kw) or a linear weight (out, in):

- ``row``:     blocks are consecutive runs of d values of W.reshape(out, -1), i.e. along the kernel
               window for 3x3 convs (d = 9 is one whole kernel) and along input channels for 1x1/linear
- ``channel``: blocks run along input channels: W.permute(0, 2, 3, 1).reshape(out, -1) (ChangeDim)

In the file: ceil(log2 K) bits per code and the codebook in fp16, or fp32 where fp16 would change it
(the loaded model equals the packed one). In ONNX: the codebook and the codes feed a Gather.
"""
from __future__ import annotations

import math

import torch

from .base import CodedEncoding
from .checks import fail
from .registry import register_encoding

LAYOUTS = ("row", "channel")


@register_encoding
class PQ(CodedEncoding):
    name = "pq"
    param_names = ("codebook",)
    codes_per_weight = False

    def validate(self, weight):
        if weight.layout not in LAYOUTS:
            raise ValueError(f"pq layout must be 'row' or 'channel', got {weight.layout!r}")
        weight.bits = max(1, math.ceil(math.log2(weight.params["codebook"].shape[1])))

    def code_range(self, weight):
        return 0, weight.params["codebook"].shape[1] - 1

    def bits_per_weight(self, weight):
        return weight.bits / weight.params["codebook"].shape[2]  # codebook (S, K, d): one code per d weights

    def dequantize(self, weight):
        codebook = weight.params["codebook"].float()
        n_sub, _, block_size = codebook.shape  # (S, K, d)
        codes = weight.codes.long()
        out, n_blocks = codes.shape
        subspace = torch.arange(n_blocks) // (n_blocks // n_sub)  # (n_blocks,)
        blocks = codebook[subspace.unsqueeze(0).expand(out, -1), codes]  # (out, n_blocks, d)
        return pq_unblocks(blocks, tuple(weight.shape), weight.layout)

    def no_integer_form(self, weight):
        return "pq weights are codebook rows, not integer codes times a scale"

    def onnx_weight(self, weight):
        codebook = weight.params["codebook"]  # (S, K, d)
        n_sub, n_centroids, block = codebook.shape
        if n_centroids > 1 << 16:
            return None
        codes = weight.codes.long()  # (out, n_blocks)
        out, n_blocks = codes.shape
        offsets = (torch.arange(n_blocks) // (n_blocks // n_sub)) * n_centroids  # (n_blocks,)
        table = codebook.reshape(n_sub * n_centroids, block)
        if table.dtype not in (torch.float16, torch.float32):
            table = table.float()
        shape = tuple(weight.shape)
        if weight.layout == "channel" and len(shape) == 4:
            _, cin, kh, kw = shape
            block_shape, permute = (out, kh, kw, cin), (0, 3, 1, 2)
        else:
            block_shape, permute = shape, None
        code_dtype = torch.uint8 if n_centroids <= 256 else torch.uint16
        args = (codes.to(code_dtype), offsets, table, block_shape, permute)
        return "gather", lambda: GatherWeight.apply(*args)

    def store_param(self, key, value, float_dtype):
        if key == "codebook" and value.is_floating_point():
            as_half = value.to(torch.float16)
            if float_dtype != torch.float32 or torch.equal(as_half.to(value.dtype), value):
                return as_half
        return value

    def read_fields(self, meta, what):
        layout = meta.get("layout")
        if layout not in LAYOUTS:
            fail(what, f"pq layout must be 'row' or 'channel', found {layout!r}")
        return {"layout": layout}

    def codes_shape(self, params, shape, what):
        codebook = params["codebook"]
        if codebook.dim() != 3 or min(codebook.shape) < 1:
            fail(what, f"pq codebook must be (subspaces, K, block size), found {tuple(codebook.shape)}")
        n_sub, _, block = codebook.shape
        out = shape[0]
        per_row = math.prod(shape) // max(out, 1)
        if out < 1 or per_row % block or (per_row // block) % n_sub:
            fail(what, f"pq codebook {tuple(codebook.shape)} does not tile a weight of shape {list(shape)}")
        return [out, per_row // block]

    def describe(self, meta):
        codec = meta["codes"]["codec"]
        return f"pq {meta['codes']['w']}b {meta['layout']}" + ("" if codec == "bits" else f" {codec}")


class GatherWeight(torch.autograd.Function):
    """A PQ weight in ONNX: rows of the flattened codebook (S K, d) picked by codes + subspace offsets."""

    @staticmethod
    def forward(ctx, codes, offsets, codebook, block_shape: tuple, permute: tuple | None):
        blocks = codebook.float()[codes.long() + offsets]  # (out, n_blocks, d)
        blocks = blocks.reshape(block_shape)
        return blocks.permute(*permute).contiguous() if permute else blocks

    @staticmethod
    def symbolic(g, codes, offsets, codebook, block_shape, permute):
        index = g.op("Add", g.op("Cast", codes, to_i=7), offsets)  # 7: INT64
        table = g.op("Cast", codebook, to_i=1)  # 1: FLOAT
        blocks = g.op("Gather", table, index, axis_i=0)  # (out, n_blocks, d)
        shape = g.op("Constant", value_t=torch.tensor(block_shape, dtype=torch.int64))
        weight = g.op("Reshape", blocks, shape)
        return g.op("Transpose", weight, perm_i=list(permute)) if permute else weight


def pq_blocks(weight: torch.Tensor, block_size: int, layout: str) -> torch.Tensor:
    """Split a weight into PQ blocks: returns (out, n_blocks, block_size) for the given layout."""
    out = weight.shape[0]
    if layout == "channel" and weight.dim() == 4:
        weight = weight.permute(0, 2, 3, 1)  # (out, kh, kw, in): blocks run along input channels
    flat = weight.reshape(out, -1)  # (out, cols)
    if flat.shape[1] % block_size:
        raise ValueError(f"block size {block_size} does not divide the {flat.shape[1]} columns of the weight")
    return flat.reshape(out, flat.shape[1] // block_size, block_size)


def pq_unblocks(blocks: torch.Tensor, shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """Inverse of `pq_blocks`: (out, n_blocks, d) back to the weight's shape."""
    out = shape[0]
    if layout == "channel" and len(shape) == 4:
        _, cin, kh, kw = shape
        return blocks.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return blocks.reshape(shape)
