"""Parameters, MACs, BOPs and bytes per layer, measured with forward hooks on a real forward pass.

- MACs (multiply-accumulates) per input sample: a Conv2d computes C_in/groups * kh * kw MACs per output
  element, a Linear `in_features` per output element; a module may define
  `deepshrink_macs(self, inputs, output) -> int` (MACs for the whole batch it just ran) to report what
  it really performs, e.g. a dynamically gated conv. Normalisation, activations and pooling count 0,
  as in the figures papers quote (ResNet-18: 1.82 GMACs at 224x224). Attention counts its two products,
  Q K^T and weights @ V (T x S x C each per sample, as ViT papers count them); nn.MultiheadAttention also
  its four projections, computed inside its own forward (SplitAttention's are Linear modules with rows of
  their own).
- BOPs (bit operations, Baskin et al. / "UNIQ", TOCS 2021, Eq. 1 without the accumulator term):
  BOPs = MACs x weight bits x activation bits; a float layer costs MACs x 32 x 32.
- bytes: the layer's own parameters at the precision they are stored at (see `precision`).

Example::

    report = profile(create_model("resnet20"), input_size=(3, 32, 32))
    report.totals["macs"]          # 40,551,040
    print(report.format_table())
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import UserError
from ..nn.attention import SplitAttention
from .precision import act_bits, encoded_weights, param_count, storage_bytes, weight_bits


@dataclass
class LayerStats:
    """One row of the table: a module that holds parameters or performs MACs."""

    name: str
    type: str
    params: int
    macs: int  # per input sample
    weight_bits: float
    act_bits: float
    bops: int
    bytes: int


@dataclass
class ComplexityReport:
    """The per-layer rows (in execution order) plus totals; `to_dict()` is JSON-ready."""

    input_size: tuple[int, ...]
    layers: list[LayerStats]

    @property
    def totals(self) -> dict:
        params = sum(row.params for row in self.layers)
        size = sum(row.bytes for row in self.layers)
        return {
            "params": params,
            "macs": sum(row.macs for row in self.layers),
            "bops": sum(row.bops for row in self.layers),
            "bytes": size,
            "fp32_bytes": 4 * params,
            "compression_ratio": (4 * params / size) if size else 1.0,
        }

    def to_dict(self) -> dict:
        return {"input_size": list(self.input_size), "layers": [asdict(row) for row in self.layers],
                "totals": self.totals}

    def format_table(self) -> str:
        """A fixed-width table, one line per layer, then the totals."""
        header = f"{'layer':<34} {'type':<18} {'params':>11} {'MACs':>14} {'W':>5} {'A':>3} {'BOPs':>18} {'bytes':>11}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            lines.append(f"{r.name:<34} {r.type:<18} {r.params:>11,} {r.macs:>14,} {_bits(r.weight_bits):>5} "
                         f"{_bits(r.act_bits):>3} {r.bops:>18,} {r.bytes:>11,}")
        t = self.totals
        lines += ["-" * len(header),
                  f"{'total':<53} {t['params']:>11,} {t['macs']:>14,} {'':>9} {t['bops']:>18,} {t['bytes']:>11,}",
                  f"input {tuple(self.input_size)}: {t['params'] / 1e6:.3f} M params, {t['macs'] / 1e6:.2f} MMACs "
                  f"({t['macs'] / 1e9:.3f} GMACs), {t['bops'] / 1e9:.2f} GBOPs, {t['bytes'] / 2**20:.3f} MiB "
                  f"({t['compression_ratio']:.1f}x smaller than float32)"]
        return "\n".join(lines)


def _bits(bits: float) -> str:
    return f"{bits:g}" if bits == int(bits) else f"{bits:.2f}"


ATTENTION = (nn.MultiheadAttention, SplitAttention)


def _dense_macs(module: nn.Module, output: torch.Tensor, batch: int) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() // batch * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() // batch * module.in_features
    return 0


def _attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """MACs per sample of an attention module's forward(query, key, value, ...): 2 T S C for Q K^T and
    weights @ V (T queries, S keys, C = embed_dim), plus the projections nn.MultiheadAttention runs itself."""
    query, key = (list(args) + [kwargs.get("query"), kwargs.get("key")][len(args):])[:2]
    token_dim = 1 if module.batch_first and query.dim() == 3 else 0  # (B, T, C) or (T, B, C) / (T, C)
    target, source = query.shape[token_dim], key.shape[token_dim]
    source += (module.bias_k is not None) + bool(module.add_zero_attn)  # the appended key and value
    dim = module.embed_dim
    macs = 2 * target * source * dim
    if isinstance(module, nn.MultiheadAttention):
        macs += 2 * target * dim * dim + key.shape[token_dim] * (module.kdim + module.vdim) * dim
    return macs


def _precision_source(module: nn.Module) -> nn.Module:
    """A wrapper (e.g. a gated conv) takes its precision from its first conv/linear unless it has its own;
    attention's products multiply activations by activations: float, whatever its projections hold."""
    if isinstance(module, ATTENTION):
        return module
    if encoded_weights(module) or any(hasattr(module, a) for a in ("weight_bits", "input_quant", "act_bits")):
        return module
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return module
    inner = next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return inner if inner is not None else module


def _example_input(model: nn.Module, input_size) -> tuple[tuple[int, ...], torch.Tensor]:
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise UserError("the model has no default input size; pass input_size=(C, H, W)")
    if isinstance(input_size, int):
        channels = getattr(model, "default_input_size", (3,))[0]
        input_size = (channels, input_size, input_size)
    input_size = tuple(int(s) for s in input_size)
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return input_size, torch.randn(1, *input_size, generator=generator).to(device)


@torch.no_grad()
def profile(model: nn.Module, input_size=None, inputs: torch.Tensor | None = None) -> ComplexityReport:
    """Per-layer params, MACs, BOPs and bytes of `model` from one real forward pass in eval mode.

    `input_size` is (C, H, W) (or H for square inputs; default: the model's `default_input_size`);
    `inputs` replaces the random example by a real batch (MACs are then averaged per sample, which
    matters for input-dependent layers that define `deepshrink_macs`).
    """
    if inputs is None:
        input_size, inputs = _example_input(model, input_size)
    else:
        input_size = tuple(inputs.shape[1:])
    batch = inputs.shape[0]
    custom = {m for m in model.modules() if callable(getattr(m, "deepshrink_macs", None))}
    inside_custom = {id(d) for m in custom for d in m.modules() if d is not m}
    macs: dict[str, int] = {}
    order: list[str] = []

    def hook_for(name: str):
        def hook(module, args, output):
            if id(module) in inside_custom or not isinstance(output, torch.Tensor):
                return
            if module in custom:
                count = int(module.deepshrink_macs(args, output)) // batch
            else:
                count = _dense_macs(module, output, batch)
            if name not in macs:
                order.append(name)
                macs[name] = 0
            macs[name] += count
        return hook

    def attention_hook_for(name: str):
        def hook(module, args, kwargs, output):
            if id(module) in inside_custom:
                return
            if name not in macs:
                order.append(name)
                macs[name] = 0
            macs[name] += _attention_macs(module, args, kwargs)
        return hook

    handles = [m.register_forward_hook(attention_hook_for(name), with_kwargs=True) if isinstance(m, ATTENTION)
               else m.register_forward_hook(hook_for(name)) for name, m in model.named_modules()]
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    except UserError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"the model does not run on inputs of shape {tuple(inputs.shape)}: {exc}; "
                        "pass the input size it was built for") from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    modules = dict(model.named_modules())
    rows = [name for name in order if macs[name] > 0 or param_count(modules[name]) > 0]
    rows += [name for name, m in modules.items() if name not in macs and param_count(m) > 0]
    return ComplexityReport(input_size, [_layer_stats(name, modules[name], macs.get(name, 0)) for name in rows])


def _layer_stats(name: str, module: nn.Module, macs: int) -> LayerStats:
    source = _precision_source(module)
    w_bits, a_bits = weight_bits(source), act_bits(source)
    return LayerStats(name=name or "(model)", type=type(module).__name__, params=param_count(module), macs=macs,
                      weight_bits=w_bits, act_bits=a_bits, bops=round(macs * w_bits * a_bits),
                      bytes=storage_bytes(module))
