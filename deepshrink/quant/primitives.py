"""Pure tensor quantizers and their straight-through (STE) autograd functions.

Each function takes float tensors and returns float tensors (the de-quantized value used in the
forward pass); the `*_codes` functions give the integer codes plus decoding floats that `convert`
stores in an `EncodedWeight`. Every gradient rule cites the paper and equation it implements.
No module state lives here: quantized layers (deepshrink.quant.layers) own their parameters.

Example::

    w_q = bwn_quantize(conv.weight)                       # alpha * sign(W), clipped STE
    codes, alpha = binary_codes(conv.weight), bwn_scale(conv.weight)
    a_q = dorefa_activation(x, bits=2)                    # clip to [0, 1], 2-bit grid
"""
from __future__ import annotations

import math

import torch


def _reduce_dims(x: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    """Dims averaged over: all but the output-channel dim (per filter) or all (per layer)."""
    return tuple(range(1, x.dim())) if per_channel and x.dim() > 1 else tuple(range(x.dim()))


def _keep_shape(stat: torch.Tensor, x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Reshape a per-filter (out,) / per-layer () statistic to broadcast against `x`."""
    if per_channel and x.dim() > 1:
        return stat.reshape(x.shape[0], *([1] * (x.dim() - 1)))  # (out, 1, 1, 1)
    return stat.reshape(())


def window_grad(grad: torch.Tensor, x: torch.Tensor, low: float, high: float,
                include_high: bool = True) -> torch.Tensor:
    """grad * 1{low <= x <= high} (or `< high`): the straight-through window of a clip or sign.

    One fused kernel (aten's hardtanh_backward passes grad where low' < x < high'); the bounds are
    widened to the adjacent float so that `low` (and `high` when included) stay inside.
    """
    low = _next_float(low, -math.inf, x.dtype)
    high = _next_float(high, math.inf, x.dtype) if include_high else float(high)
    return torch.ops.aten.hardtanh_backward(grad, x, low, high)


def _next_float(value: float, toward: float, dtype: torch.dtype) -> float:
    """The `dtype` number adjacent to `value` in the direction of `toward` (as a Python float)."""
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # nextafter has no half kernels; half inputs keep an exclusive bound
    value = torch.tensor(float(value), dtype=dtype)
    return float(torch.nextafter(value, torch.tensor(toward, dtype=dtype)))


# ----------------------------------------------------------------------------- rounding / sign STE
class _RoundSTE(torch.autograd.Function):
    """round(x) forward, identity backward (DoReFa-Net, Zhou et al. 2016, Eq. 5's STE)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) with the straight-through gradient d/dx = 1."""
    return _RoundSTE.apply(x)


class _Straight(torch.autograd.Function):
    """Forward returns `target` exactly; backward passes the gradient to `x` unchanged (identity STE)."""

    @staticmethod
    def forward(ctx, x, target):
        return target.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Value `target` (computed without gradient), gradient d/dx = identity."""
    return _Straight.apply(x, target.detach())


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1} (zero maps to +1, so every value has a binary code)."""
    return torch.ones_like(x).copysign_(x)  # copysign: +0.0 -> +1 (and -0.0 -> -1, like its code)


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; backward g * 1{|x| <= 1} (XNOR-Net, Rastegari et al. 2016, Sec. 3.2:
    the straight-through estimator of Hubara et al., "cancelling the gradient when r is too large")."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return window_grad(grad, x, -1.0, 1.0)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with the clipped straight-through gradient 1{|x| <= 1}."""
    return _SignSTE.apply(x)


# ----------------------------------------------------------------------------- BWN / XNOR-Net
def bwn_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """BWN's optimal scale (Rastegari et al. 2016, Eq. 4): alpha* = ||W||_l1 / n = mean |W|.

    Per output filter (shape (out,)) by default, per layer (shape ()) with `per_channel=False`.
    """
    return w.abs().mean(dim=_reduce_dims(w, per_channel))


def bwn_quantize(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """W ~ alpha * sign(W) (Rastegari et al. 2016, Eq. 4); sign uses the clipped STE 1{|W| <= 1}.

    alpha is differentiated exactly (it is a function of W), giving the paper's 1/n term.
    """
    alpha = _keep_shape(bwn_scale(w, per_channel), w, per_channel)
    return alpha * sign_ste(w)


def binary_codes(x: torch.Tensor) -> torch.Tensor:
    """Codes in {0, 1} of binary_sign(x): code 1 means +1 (EncodedWeight 'binary': W = s * (2c - 1))."""
    return (~torch.signbit(x)).to(torch.uint8)


def xnor_scaling_map(abs_input_mean: torch.Tensor, kernel_size, stride=1, padding=0,
                     dilation=1) -> torch.Tensor:
    """XNOR-Net's K = A * k (Rastegari et al. 2016, Sec. 3.2, Fig. 2): A = mean_c |I| of shape
    (N, 1, H, W), k a (kh x kw) box filter of value 1/(kh*kw), with the conv's stride/padding.

    Returns K of shape (N, 1, H', W'), broadcast over the binary conv's output channels.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    box = abs_input_mean.new_full((1, 1, kh, kw), 1.0 / (kh * kw))
    return torch.nn.functional.conv2d(abs_input_mean, box, None, stride, padding, dilation)


# ----------------------------------------------------------------------------- TWN
def twn_threshold(w: torch.Tensor, factor: float = 0.7, per_channel: bool = False) -> torch.Tensor:
    """TWN's threshold (Li & Liu 2016, Sec. 3.2): Delta* ~= 0.7 * E(|W|) = 0.7/n * sum |W_i|."""
    return factor * w.abs().mean(dim=_reduce_dims(w, per_channel))


def twn_scale(w: torch.Tensor, delta: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """TWN's scale (Li & Liu 2016, Sec. 3.2): alpha* = 1/|I_Delta| * sum_{i in I_Delta} |W_i|,
    I_Delta = {i : |W_i| > Delta}. (Dividing by the count of |W_i| <= Delta is a known seed bug.)"""
    dims = _reduce_dims(w, per_channel)
    mask = (w.abs() > _keep_shape(delta, w, per_channel)).to(w.dtype)
    return (w.abs() * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1)


def ternary_codes(w: torch.Tensor, delta: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Codes in {-1, 0, 1}: sign(W_i) where |W_i| > Delta, else 0 (TWN Eq. 3 / TTQ Eq. 6)."""
    d = _keep_shape(delta, w, per_channel)
    return ((w > d).to(torch.int8) - (w < -d).to(torch.int8))


def twn_quantize(w: torch.Tensor, factor: float = 0.7, per_channel: bool = False) -> torch.Tensor:
    """alpha * ternary(W) forward; identity straight-through gradient to the latent W (TWN Sec. 3.3:
    the ternary weights are used in forward/backward, the full-precision ones are updated)."""
    with torch.no_grad():
        delta = twn_threshold(w, factor, per_channel)
        alpha = _keep_shape(twn_scale(w, delta, per_channel), w, per_channel)
        w_t = alpha * ternary_codes(w, delta, per_channel).to(w.dtype)
    return straight_through(w, w_t)


# ----------------------------------------------------------------------------- TTQ
class _TTQ(torch.autograd.Function):
    """Trained Ternary Quantization (Zhu et al. 2017).

    forward (Eq. 6): w_t = W_p if w > Delta; 0 if |w| <= Delta; -W_n if w < -Delta.
    backward (Eq. 7): dL/dW_p = sum_{i in I_p} dL/dw_t(i); for W_n the same sum over I_n, negated
      because W_n is stored positive and enters as -W_n (the paper states Eq. 7 for the signed level).
    backward (Eq. 8): dL/dw = W_p * dL/dw_t on I_p, 1 * dL/dw_t on I_z, W_n * dL/dw_t on I_n.
    """

    @staticmethod
    def forward(ctx, w, w_p, w_n, delta):
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, w_p, w_n)
        return w_p * pos.to(w.dtype) - w_n * neg.to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        pos, neg, w_p, w_n = ctx.saved_tensors
        zero = ~(pos | neg)
        grad_w = grad * (w_p * pos + zero.to(grad.dtype) + w_n * neg)
        grad_p = (grad * pos).sum().reshape(w_p.shape)
        grad_n = -(grad * neg).sum().reshape(w_n.shape)
        return grad_w, grad_p, grad_n, None


def ttq_threshold(w: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """TTQ's layer threshold (Zhu et al. 2017, Eq. 9): Delta = t * max |w|, t = 0.05."""
    return t * w.detach().abs().max()


def ttq_quantize(w: torch.Tensor, w_p: torch.Tensor, w_n: torch.Tensor, t: float = 0.05) -> torch.Tensor:
    """Ternary weight with learned positive/negative scales W_p, W_n (> 0, shape (1,)); see `_TTQ`."""
    return _TTQ.apply(w, w_p, w_n, ttq_threshold(w, t))


def ttq_init_scales(w: torch.Tensor, t: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial W_p, W_n from the float weights: mean |w| over I_p and over I_n (shape (1,) each)."""
    delta = ttq_threshold(w, t)
    w = w.detach()
    pos, neg = w > delta, w < -delta
    w_p = w[pos].abs().mean() if pos.any() else w.abs().mean()
    w_n = w[neg].abs().mean() if neg.any() else w.abs().mean()
    return w_p.reshape(1).clone(), w_n.reshape(1).clone()


# ----------------------------------------------------------------------------- DoReFa-Net
def quantize_k(r: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's quantize_k (Zhou et al. 2016, Eq. 5): r in [0, 1] -> round((2^k - 1) r) / (2^k - 1),
    straight-through gradient."""
    n = 2**bits - 1
    return round_ste(r * n) / n


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa k-bit weights.

    k = 1 (Eq. 7-8): r_o = sign(r_i) * E(|r_i|) (layer-wise mean); backward identity, dL/dr_i = dL/dr_o.
    k > 1 (Eq. 9):   r_o = 2 quantize_k( tanh(r_i) / (2 max|tanh(r_i)|) + 1/2 ) - 1.
    """
    if bits >= 32:
        return w
    if bits == 1:
        # Eq. 8: dc/dr_i = dc/dr_o, the identity through sign *and* scale (not E|W| * g, no path through E|W|)
        return straight_through(w, w.abs().mean() * binary_sign(w))
    t = torch.tanh(w)
    return 2 * quantize_k(t / (2 * t.abs().max()) + 0.5, bits) - 1


def dorefa_weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of `dorefa_weight` for k > 1 and their step: c in 0..2^k-1, w_q = (c - (2^k-1)/2) * step,
    step = 2 / (2^k - 1). (k = 1 uses `binary_codes` with scale E|W|.)"""
    n = 2**bits - 1
    t = torch.tanh(w)
    codes = torch.round((t / (2 * t.abs().max()) + 0.5) * n)
    return codes.to(torch.int32), torch.tensor(2.0 / n)


class _DoReFaAct(torch.autograd.Function):
    """quantize_k(clip(x, 0, 1)) in one node: backward g * 1{0 <= x <= 1} (clip's gradient times STE)."""

    @staticmethod
    def forward(ctx, x, bits):
        ctx.save_for_backward(x)
        n = 2**bits - 1
        return torch.clamp(x, 0.0, 1.0).mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return window_grad(grad, x, 0.0, 1.0), None


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa k-bit activations (Zhou et al. 2016, Sec. 2.6): quantize_k(clip(x, 0, 1)); the clip's
    gradient is 1 on [0, 1] and 0 outside, the rounding's is straight-through (Eq. 5)."""
    if bits >= 32:
        return x
    return _DoReFaAct.apply(x, bits)


def dorefa_activation_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes 0..2^k-1 of `dorefa_activation` (value = code / (2^k - 1))."""
    return torch.round(torch.clamp(x, 0.0, 1.0) * (2**bits - 1)).to(torch.int32)


def dorefa_quantize_gradient(dr: torch.Tensor, bits: int, generator: torch.Generator | None = None
                             ) -> torch.Tensor:
    """DoReFa's k-bit gradient quantizer (Zhou et al. 2016, Eq. 12):

        g_k(dr) = 2 max0(|dr|) [ quantize_k( dr / (2 max0(|dr|)) + 1/2 + N(k) ) - 1/2 ],
        N(k) = sigma / (2^k - 1),  sigma ~ Uniform(-0.5, 0.5),

    max0 over every axis but the first (mini-batch) one. The noise makes the rounding stochastic,
    so E[g_k(dr)] = dr; outputs lie on the grid 2 max0 (c / (2^k - 1) - 1/2), c in 0..2^k-1.
    """
    n = 2**bits - 1
    batch = dr.shape[0] if dr.dim() > 1 else 1
    flat = dr.reshape(batch, -1)  # (N, features)
    max0 = torch.linalg.vector_norm(flat, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12)  # (N, 1)
    u = torch.rand(flat.shape, generator=generator, device=dr.device, dtype=dr.dtype)  # sigma + 1/2
    # round(z + sigma) = floor(z + u) for z = n (dr / (2 max0) + 1/2) in [0, n], u in [0, 1): lands in 0..n
    q = u.addcmul_(flat, (n / 2) / max0).add_(n / 2).floor_()
    return q.mul_(max0 * (2.0 / n)).sub_(max0).reshape(dr.shape)


class _GradQuant(torch.autograd.Function):
    """Identity forward; backward applies `dorefa_quantize_gradient` (DoReFa Sec. 2.5)."""

    @staticmethod
    def forward(ctx, x, bits):
        ctx.bits = bits
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return dorefa_quantize_gradient(grad, ctx.bits), None


def quantize_gradient(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Pass `x` through unchanged; quantize the gradient flowing back through it to `bits` bits."""
    return x if bits >= 32 else _GradQuant.apply(x, bits)
