"""Quantization-aware training: primitives, quantized layers, and the registered QAT methods.

Importing this package registers the methods bwn, xnor, twn, ttq, dorefa, lsq, pact and the
packable activation quantizers. Map:

    primitives.py   pure tensor quantizers + STE autograd functions (paper-cited), fixed grids
    learned_step.py LSQ and PACT: the quantizers whose step / clipping level is trained
    weight_quant.py weight quantizer modules (forward + encode to an EncodedWeight)
    act_quant.py    packable input-activation quantizers (DoReFa, PACT, LSQ, XNOR)
    layers.py       QConv2d / QLinear training layers and their conversion
    qat.py          QATMethod base: swap layers, initialise, ctx.fit, convert
    binary.py, ternary.py, dorefa.py, lsq.py, pact.py   the methods
"""
from . import binary, dorefa, lsq, pact, ternary  # noqa: F401  (registers the methods)
from .act_quant import (DoReFaActivation, LSQActivation, PACTActivation, ScaledDoReFaActivation,
                        XNORActivation)
from .layers import QConv2d, QLinear, quantize_layer
from .qat import QATConfig, QATMethod, calibrate, check_bits
from .weight_quant import BinaryWeight, DoReFaWeight, LSQWeight, TernaryWeight, TTQWeight, WeightQuantizer

__all__ = ["BinaryWeight", "DoReFaActivation", "DoReFaWeight", "LSQActivation", "LSQWeight", "PACTActivation",
           "QATConfig", "QATMethod", "QConv2d", "QLinear", "ScaledDoReFaActivation", "TTQWeight", "TernaryWeight",
           "WeightQuantizer", "XNORActivation", "calibrate", "check_bits", "quantize_layer"]
