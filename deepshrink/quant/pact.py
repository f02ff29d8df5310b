"""PACT (Choi et al. 2018): activations clipped at a learned alpha and quantized to k bits, with an
L2 penalty on alpha; weights quantized with DoReFa's scheme as in the paper's experiments.

Example::

    result = deepshrink.compress(model, "pact", train_data=train, val_data=test)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.hooks import Hook
from ..errors import UserError
from ..registry import register_method
from .act_quant import PACTActivation
from .qat import QATConfig, QATMethod, check_bits
from .weight_quant import DoReFaWeight


@dataclass
class PACTConfig(QATConfig):
    """act_bits (1..16); weight_bits (1..16, 32 = float, DoReFa weights); alpha_init (None: from the
    first batch; the paper uses a large constant such as 10); alpha_decay: lambda of the L2 penalty."""

    act_bits: int = 4
    weight_bits: int = 4
    alpha_init: float | None = None
    alpha_decay: float = 5e-4

    def __post_init__(self):
        check_bits("pact", "act_bits", self.act_bits, 1, 16, allow_off=False)
        check_bits("pact", "weight_bits", self.weight_bits, 1, 16)
        if self.alpha_init is not None and not (isinstance(self.alpha_init, (int, float)) and self.alpha_init > 0):
            raise UserError(f"pact: alpha_init must be a positive number or null; got {self.alpha_init!r}")
        if not isinstance(self.alpha_decay, (int, float)) or self.alpha_decay < 0:
            raise UserError(f"pact: alpha_decay must be a number >= 0; got {self.alpha_decay!r}")


class PACTPenalty(Hook):
    """PACT's L2 regularisation of the clipping levels: sum over layers of lambda / 2 * alpha^2
    (Choi et al. 2018, Sec. 3.1), added to the task loss through the training loop's `extra_loss`."""

    def extra_loss(self, trainer, inputs, outputs, targets):
        terms = [m.alpha_decay / 2 * m.alpha.pow(2).sum() for m in trainer.model.modules()
                 if isinstance(m, PACTActivation) and m.alpha_decay > 0]
        return sum(terms) if terms else None


@register_method("pact", PACTConfig)
class PACT(QATMethod):
    """Parameterized Clipping Activation."""

    def weight_quantizer(self, cfg, layer):
        return DoReFaWeight(cfg.weight_bits)

    def input_quantizer(self, cfg, layer):
        return PACTActivation(cfg.act_bits, cfg.alpha_init, cfg.alpha_decay)

    def hooks(self):
        return [PACTPenalty()]
