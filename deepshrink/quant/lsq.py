"""LSQ (Esser et al. 2020): learned step size quantization of weights and activations.

v_hat = round(clip(v / s, -Q_N, Q_P)) * s (Eq. 1-2), step gradient Eq. 3 scaled by 1/sqrt(N Q_P)
(Sec. 2.2), step initialised to 2<|v|>/sqrt(Q_P) (weights from the float weights, activations from
the first batch). Weights are signed; activations unsigned unless negative inputs are seen.
Deviation: `act_init: mse` starts each activation step at the least-error step on the first batch
instead (the paper's init clips too much at 2-3 bits; see act_quant.lsq_mse_step). Off in the bare
method settings; on in the built-in `lsq-w2a2` recipe, which was chosen on validation over the paper's
settings (`lsq-w2a2-paper`).

Example::

    result = deepshrink.compress(model, "lsq-w2a2", train_data=train, val_data=test)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..registry import register_method
from .act_quant import LSQActivation
from .qat import FULL_PRECISION, QATConfig, QATMethod, check_bits
from .weight_quant import LSQWeight, WeightQuantizer

ACT_INITS = ("paper", "mse")


@dataclass
class LSQConfig(QATConfig):
    """weight_bits (2..16: signed needs two bits), act_bits (1..16); 32 turns that quantizer off.
    act_init: "paper" (2<|x|>/sqrt(Q_P)) or "mse" (the step with the least quantization error on the
    first batch; a deviation, see `lsq_mse_step`)."""

    weight_bits: int = 4
    act_bits: int = 4
    act_init: str = "paper"

    def __post_init__(self):
        check_bits("lsq", "weight_bits", self.weight_bits, 2, 16)
        check_bits("lsq", "act_bits", self.act_bits, 1, 16)
        if self.act_init not in ACT_INITS:
            raise UserError(f"lsq: act_init must be one of {', '.join(ACT_INITS)}; got {self.act_init!r}")


@register_method("lsq", LSQConfig)
class LSQ(QATMethod):
    """Learned Step Size Quantization."""

    def weight_quantizer(self, cfg, layer):
        return WeightQuantizer() if cfg.weight_bits == FULL_PRECISION else LSQWeight(cfg.weight_bits)

    def input_quantizer(self, cfg, layer):
        return None if cfg.act_bits == FULL_PRECISION else LSQActivation(cfg.act_bits, init=cfg.act_init)
