"""Graph surgery for the integer engine (steps 2-5 of deepshrink/runtime/qdq_graph.py): fold BatchNorm
into int8 weight scales, int8 weights for float layers, activation Q/DQ placement and calibration.

Works on the exported graph's nodes; `build` returns a fresh ModelProto each time, so one `Rewrite`
gives both the calibration probe (`ranges=None`) and the final graph.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .qdq import Grid, minmax_grid, pairs_saturate, weight_limit

MARKER = ("deepshrink", "ActQuant")  # (domain, op) of a trained activation quantizer in the export
CALIBRATED = "calibrated"  # the need of an 8-bit point whose grid comes from calibration
OPSET = 17
COMPUTE = ("Conv", "Gemm", "Add")  # the ops ONNX Runtime fuses to QLinearConv, QGemm, QLinearAdd


def _attr(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _grid(marker) -> Grid:
    return Grid(float(_attr(marker, "scale", 1.0)), int(_attr(marker, "zero_point", 0)),
                int(_attr(marker, "qmin", 0)), int(_attr(marker, "qmax", 255)))


class Rewrite:
    """The exported graph as a node list plus numpy initialisers (Constant nodes become initialisers)."""

    def __init__(self, model: onnx.ModelProto, saturating: bool | None = None):
        """`saturating` (default: this CPU's `qdq.pairs_saturate()`): float layers get 7-bit weights."""
        self.saturating = pairs_saturate() if saturating is None else saturating
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.inits:  # the exporter's shared constants
                self.inits[node.output[0]] = self.inits[node.input[0]]
            else:
                self.nodes.append(node)
        self.graph_input = next(i for i in graph.input if i.name not in self.inits)
        self.graph_outputs = list(graph.output)
        self._count = 0
        self._widened: set[str] = set()  # codes `_widen` wrote: a weight two convs share is widened once

    def _fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}__{self._count}"

    def _const(self, base: str, array: np.ndarray) -> str:
        name = self._fresh(base)
        self.inits[name] = array
        return name

    def _producers(self, nodes) -> dict:
        return {out: node for node in nodes for out in node.output}

    def _consumers(self, nodes) -> dict:
        consumers = defaultdict(list)
        for node in nodes:
            for name in node.input:
                consumers[name].append(node)
        return consumers

    # ----------------------------------------------------------------------------- step 2: BatchNorm
    def fold_batchnorm(self) -> int:
        """Fold every BatchNormalization that alone reads a Conv's output into that Conv; returns how many."""
        producers, consumers = self._producers(self.nodes), self._consumers(self.nodes)
        folded = 0
        for bn in [n for n in self.nodes if n.op_type == "BatchNormalization"]:
            conv = producers.get(bn.input[0])
            if conv is None or conv.op_type != "Conv" or len(consumers[bn.input[0]]) != 1:
                continue
            gamma, beta, mean, var = (self.inits[name].astype(np.float64) for name in bn.input[1:5])
            factor = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))  # (out,)
            self._scale_weight(conv, factor, producers)
            bias = self.inits[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else np.zeros_like(factor)
            bias_name = self._const(conv.name + "_bias", ((bias - mean) * factor + beta).astype(np.float32))
            inputs = [conv.input[0], conv.input[1], bias_name]
            del conv.input[:]
            conv.input.extend(inputs)
            conv.output[0] = bn.output[0]
            self.nodes.remove(bn)
            folded += 1
        return folded

    def _scale_weight(self, conv, factor: np.ndarray, producers) -> None:
        dequantize = producers.get(conv.input[1])
        if dequantize is not None and dequantize.op_type == "DequantizeLinear":
            # the codes stay exact: |factor| joins the per-channel scale, its sign flips the channel's codes
            codes = self.inits[dequantize.input[0]].astype(np.int16)
            scale = self.inits[dequantize.input[1]].astype(np.float64) * np.abs(factor)
            sign = np.where(factor < 0, -1, 1).reshape(-1, *[1] * (codes.ndim - 1))
            dead = scale == 0  # gamma = 0: the channel's output is its bias alone
            codes = np.where(dead.reshape(sign.shape), 0, codes * sign)
            scale = np.where(dead, 1.0, scale)
            dequantize.input[0] = self._const("codes", codes.astype(np.int8))
            dequantize.input[1] = self._const("scale", scale.astype(np.float32))
        else:
            weight = self.inits[conv.input[1]]
            conv.input[1] = self._const("weight", (weight * factor.reshape(-1, *[1] * (weight.ndim - 1)))
                                        .astype(np.float32))

    # ----------------------------------------------------------------------------- step 3: float layers
    def quantize_float_weights(self) -> list[str]:
        """int8 per-channel symmetric weights for Conv/Gemm nodes that read a float initialiser: max |w| maps
        to 127, or where pairs saturate to `weight_limit()` (64: 2 x 255 x 64 <= 32767, any 8-bit input)."""
        names, limit = [], weight_limit(255, self.saturating)
        for node in [n for n in self.nodes if n.op_type in ("Conv", "Gemm")]:
            weight = self.inits.get(node.input[1])
            if weight is None or weight.dtype != np.float32:
                continue
            axis = 0 if node.op_type == "Conv" or _attr(node, "transB", 0) else 1
            others = tuple(d for d in range(weight.ndim) if d != axis)
            scale = np.abs(weight).max(axis=others) / limit
            scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
            shape = [1] * weight.ndim
            shape[axis] = -1
            codes = np.clip(np.round(weight / scale.reshape(shape)), -limit, limit).astype(np.int8)
            out = self._fresh(node.input[1] + "_dq")
            self.nodes.append(helper.make_node(
                "DequantizeLinear", [self._const("codes", codes), self._const("scale", scale),
                                     self._const("zero", np.zeros_like(scale, dtype=np.int8))], [out], axis=axis))
            node.input[1] = out
            names.append(node.name)
        return names

    # ----------------------------------------------------------------------------- step 4: activations
    def build(self, ranges: dict | None) -> tuple[onnx.ModelProto, dict[str, str]]:
        """The QDQ graph; with `ranges=None`, the calibration probe and {tensor: probe output name}."""
        nodes = [_copy(n) for n in self.nodes]
        outputs = {o.name for o in self.graph_outputs}
        consumers = self._consumers(nodes)
        markers = {n.output[0]: n for n in nodes if (n.domain, n.op_type) == MARKER}
        units = {}  # unit output -> [compute node] or [compute node, its Relu]
        for node in nodes:
            if node.op_type in COMPUTE and not any(x in self.inits for x in node.input[:2]) \
                    or node.op_type in ("Conv", "Gemm"):
                readers = consumers[node.output[0]]
                if len(readers) == 1 and readers[0].op_type == "Relu" and node.output[0] not in outputs:
                    units[readers[0].output[0]] = [node, readers[0]]
                else:
                    units[node.output[0]] = [node]
        needs = defaultdict(list)  # tensor -> the grids it is read at (CALIBRATED: an 8-bit calibrated one)

        def need(tensor, what):
            if what not in needs[tensor]:
                needs[tensor].append(what)

        for tensor, unit in units.items():  # a fused op's output is quantized where it is made
            if tensor not in outputs and any(c.output[0] not in markers for c in consumers[tensor]):
                need(tensor, CALIBRATED)
        for node in nodes:
            if (node.domain, node.op_type) == MARKER:
                need(node.input[0], _grid(node))
            elif node.op_type in COMPUTE:
                for x in (node.input[:1] if node.op_type != "Add" else node.input):
                    if x not in self.inits and x not in markers:
                        need(x, CALIBRATED)
        added, points, versions, grids = [], {}, {}, {}
        for tensor, wanted in needs.items():
            for k, what in enumerate(wanted):
                unit = units.get(tensor)
                if k and unit:  # one more copy of the fused op, rounded to this grid
                    unit = self._duplicate(unit)
                    nodes.extend(unit)
                source = unit[-1].output[0] if unit else tensor
                if what == CALIBRATED and ranges is None:
                    versions[(tensor, what)] = points[tensor] = source
                    continue
                grid = what if isinstance(what, Grid) else minmax_grid(*ranges[tensor])
                if unit and len(unit) == 2 and grid.zero_point == grid.qmin == 0:
                    source = unit[0].output[0]  # Q saturates at 0: the ReLU is the Q's own, drop it
                versions[(tensor, what)] = self._qdq(source, grid, added, grids)
        for node in [n for n in nodes if (n.domain, n.op_type) != MARKER]:
            for i, x in enumerate(node.input):
                if x in markers:
                    node.input[i] = versions[(markers[x].input[0], _grid(markers[x]))]
                elif (x, CALIBRATED) in versions:
                    node.input[i] = versions[(x, CALIBRATED)]
        nodes = [n for n in nodes if (n.domain, n.op_type) != MARKER] + added
        if ranges is not None:
            nodes += self._int32_biases(nodes, grids)
        return self._model(nodes, [] if ranges is not None else list(points.values())), points

    def _duplicate(self, unit: list) -> list:
        copies = [_copy(n) for n in unit]
        for copy in copies:
            copy.name = self._fresh(copy.name or copy.op_type)
        copies[0].output[0] = self._fresh(unit[0].output[0])
        if len(copies) == 2:
            copies[1].input[0] = copies[0].output[0]
            copies[1].output[0] = self._fresh(unit[1].output[0])
        return copies

    def _qdq(self, source: str, grid: Grid, added: list, grids: dict) -> str:
        scale = self._const("act_scale", np.array(grid.scale, np.float32))
        zero = self._const("act_zero", np.array(grid.zero_point, np.uint8))
        codes = self._fresh(source + "_q")
        added.append(helper.make_node("QuantizeLinear", [source, scale, zero], [codes]))
        if grid.clips:  # a grid narrower than uint8: saturation gives one end at most, the Clip both
            clipped = self._fresh(source + "_clip")
            added.append(helper.make_node("Clip", [codes, self._const("qmin", np.array(grid.qmin, np.uint8)),
                                                   self._const("qmax", np.array(grid.qmax, np.uint8))], [clipped]))
            codes = clipped
        out = self._fresh(source + "_dq")
        added.append(helper.make_node("DequantizeLinear", [codes, scale, zero], [out]))
        grids[out] = grid
        return out

    def _int32_biases(self, nodes, grids: dict) -> list:
        """Conv/Gemm biases as int32 at step x_scale * w_scale (what QLinearConv adds to its accumulator),
        after widening the codes (`_widen`) so that this step is as fine as the kernels allow."""
        producers, extra = self._producers(nodes), []
        for node in nodes:
            if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in self.inits:
                continue
            weight = producers.get(node.input[1])
            if node.input[0] not in grids or weight is None or weight.op_type != "DequantizeLinear":
                continue
            self._widen(weight, grids[node.input[0]])
            scale = (grids[node.input[0]].scale * self.inits[weight.input[1]].astype(np.float64)).astype(np.float32)
            codes = np.round(self.inits[node.input[2]] / scale).astype(np.int32)
            out = self._fresh(node.input[2] + "_dq")
            extra.append(helper.make_node("DequantizeLinear", [
                self._const("bias", codes), self._const("bias_scale", scale),
                self._const("bias_zero", np.zeros_like(codes))], [out], axis=0))
            node.input[2] = out
        return extra

    def _widen(self, dequantize, input_grid: Grid) -> None:
        """Multiply each output channel's int8 codes by the largest power of two k that keeps them within
        `limit`, dividing its scale by k: the weight is the same bit for bit and the int32 bias step
        x_scale * w_scale is k times finer. Unwidened, a 4-bit layer's bias rounds off up to ~2% of an
        output step and flips ~2% of a W4A4 ResNet-20's predictions. `limit` keeps every u8 x s8 pair
        sum (2 x max input code x max |code|) inside int16, so AVX2 CPUs without VNNI, whose vpmaddubsw
        saturates there, compute the same; a layer already wider (an int8 float layer) stays as it is."""
        if _attr(dequantize, "axis", 1) != 0 or dequantize.input[0] in self._widened:
            return
        limit = weight_limit(input_grid.qmax, saturating=True)  # exact on every CPU, VNNI or not
        codes = self.inits[dequantize.input[0]].astype(np.int16)
        peak = np.abs(codes).reshape(len(codes), -1).max(axis=1)  # (out,)
        if peak.max() > limit:
            return
        factor = (2 ** np.floor(np.log2(limit / np.maximum(peak, 1)))).astype(np.int16)  # (out,)
        dequantize.input[0] = self._const("codes", (codes * factor.reshape(-1, *[1] * (codes.ndim - 1)))
                                          .astype(np.int8))
        dequantize.input[1] = self._const("scale", (self.inits[dequantize.input[1]] / factor).astype(np.float32))
        self._widened.add(dequantize.input[0])

    def _model(self, nodes, probe_outputs: list[str]) -> onnx.ModelProto:
        nodes = _live(nodes, {o.name for o in self.graph_outputs} | set(probe_outputs))
        nodes = _topological(nodes, {self.graph_input.name, *self.inits})
        used = {name for node in nodes for name in node.input}
        graph = helper.make_graph(nodes, "deepshrink_int8", [self.graph_input],
                                  self.graph_outputs + [value_info(name) for name in probe_outputs],
                                  [tensor_proto(name, array) for name, array in self.inits.items() if name in used])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 producer_name="deepshrink")


def tensor_proto(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array).copy(order="C"), name)  # keeps 0-d scalars 0-d


def value_info(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _copy(node):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _live(nodes: list, outputs: set) -> list:
    """The nodes that some output depends on (dropped ReLUs and their like are dead)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        live = [n for n in nodes if any(out in read for out in n.output)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


def _topological(nodes: list, available: set) -> list:
    available, pending, ordered = set(available), list(nodes), []
    while pending:
        ready = [n for n in pending if all(not x or x in available for x in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a missing input near {pending[0].op_type} {pending[0].name}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    return ordered


def calibrate(probe: onnx.ModelProto, points: dict[str, str], images, batch_size: int = 64) -> dict:
    """{tensor: (min, max)} of every calibration point over `images` (N, C, H, W)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tensors, names = list(points), list(points.values())
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].numpy().astype(np.float32)
        for tensor, values in zip(tensors, session.run(names, {"input": batch})):
            low[tensor] = min(low[tensor], float(values.min()))
            high[tensor] = max(high[tensor], float(values.max()))
    return {t: (low[t], high[t]) for t in tensors}
