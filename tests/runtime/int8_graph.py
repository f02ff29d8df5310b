"""Facts about the integer engine's graphs that several test files read (tests/runtime/ is on sys.path)."""
import numpy as np
from onnx import numpy_helper

from deepshrink.runtime.qdq import pairs_saturate

# Share of the 360 digits test images whose prediction the engine keeps. Without VNNI the float layers' weights
# are 7-bit (`pairs_saturate`), which moves a few more: measured with ONNX Runtime's unfused reading of the
# same model, 97.2% / 98.1% with 8-bit weights against 96.9% / 97.5% with 7-bit ones; the weight-only model
# trained on one thread (CI) keeps 96.9%. Saturated 8-bit weights on such a CPU keep 94.4% / 91.4%.
AGREE_W4A4, AGREE_WEIGHT_ONLY = (0.96, 0.96) if pairs_saturate() else (0.97, 0.98)


def pair_sums(graph) -> dict[str, int]:
    """{conv/gemm node: the largest sum of two uint8 x int8 products it can form (2 x max input code x
    max |weight code|)}, read off the QDQ graph: an input clipped to a trained grid reaches its Clip's
    maximum, any other uint8 input 255."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    sums = {}
    for node in graph.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight, x = producers[node.input[1]], producers[node.input[0]]
        assert weight.op_type == x.op_type == "DequantizeLinear", node.name  # every one integer
        source = producers.get(x.input[0])
        qmax = int(inits[source.input[2]]) if source is not None and source.op_type == "Clip" else 255
        sums[node.name] = 2 * qmax * int(np.abs(inits[weight.input[0]].astype(np.int32)).max())
    return sums
