"""Size reports of `.dsz` files: per layer, encoding, bits per weight, bytes, share of the file.

Rows group a model's stored tensors by the module that owns them; the container overhead (safetensors
header, compressed metadata) is its own row, so the rows add up to the file size exactly. The ratio
compares with the fp32 state of the same architecture (every float tensor at 4 bytes).

Example::

    report = inspect("model.dsz")
    print(format_report(report))
"""
from __future__ import annotations

import math

from ..encodings import describe
from .payload import DTYPES

_ELEMENT_BYTES = {name: dtype.itemsize for name, dtype in DTYPES.items()}


def _streams(enc: dict):
    """Every code stream ref inside an encoding's metadata."""
    for key in ("codes", "mask"):
        if isinstance(enc.get(key), dict):
            yield enc[key]
    if isinstance(enc.get("inner"), dict):
        yield from _streams(enc["inner"])


def _params(enc: dict):
    yield from (enc.get("params") or {}).values()
    if isinstance(enc.get("inner"), dict):
        yield from _params(enc["inner"])


def _tensor_bytes(ref: dict) -> int:
    return math.prod(ref["s"]) * _ELEMENT_BYTES[ref["b"]]


def _theoretical_bits(stream: dict) -> float:
    """Raw packing at the code width (1.6 bits per trit for base-3); the Shannon bound once entropy-coded."""
    if stream["codec"] == "bits":
        return stream["count"] * stream["w"]
    if stream["codec"] == "base3":
        return stream["count"] * 1.6
    return stream["h"]


def _row(name: str) -> dict:
    return {"name": name, "encoding": [], "numel": 0, "bytes": 0, "theoretical_bits": 0.0, "shannon_bits": 0.0}


def _natural(name: str) -> list:
    """'layer1.10.conv1' after 'layer1.2.conv1': numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


def build_report(meta: dict, file_bytes: int, path: str | None = None) -> dict:
    """The size report of a packed model from its metadata and file size."""
    rows: dict[str, dict] = {}
    fp32_bytes = 0
    for key, enc in meta["encoded"].items():
        row = rows.setdefault(key.rpartition(".")[0], _row(key.rpartition(".")[0]))
        numel = math.prod(enc["shape"])
        row["encoding"].append(describe(enc))
        row["numel"] += numel
        fp32_bytes += 4 * numel
        for stream in _streams(enc):
            row["bytes"] += stream["n"]
            row["theoretical_bits"] += _theoretical_bits(stream)
            row["shannon_bits"] += stream["h"]
        for ref in _params(enc):
            row["bytes"] += _tensor_bytes(ref)
            row["theoretical_bits"] += 8 * _tensor_bytes(ref)
    for key, ref in meta["tensors"].items():
        row = rows.setdefault(key.rpartition(".")[0], _row(key.rpartition(".")[0]))
        numel = math.prod(ref["s"])
        if not row["encoding"] or row["encoding"][-1] != ref["b"]:
            row["encoding"].append(ref["b"])
        row["numel"] += numel
        row["bytes"] += _tensor_bytes(ref)
        row["theoretical_bits"] += 8 * _tensor_bytes(ref)
        fp32_bytes += 4 * numel if ref["b"].startswith(("float", "bfloat")) else _tensor_bytes(ref)
    payload = sum(row["bytes"] for row in rows.values())
    layers = []
    for row in sorted(rows.values(), key=lambda r: _natural(r["name"])):
        row["encoding"] = " + ".join(dict.fromkeys(row["encoding"]))
        row["bits_per_weight"] = 8 * row["bytes"] / max(row["numel"], 1)
        row["share"] = row["bytes"] / file_bytes
        layers.append(row)
    layers.append({"name": "(container: header + metadata)", "encoding": "-", "numel": 0,
                   "bytes": file_bytes - payload, "theoretical_bits": 0.0, "shannon_bits": 0.0,
                   "bits_per_weight": 0.0, "share": (file_bytes - payload) / file_bytes})
    theory = sum(row["theoretical_bits"] for row in layers)
    return {"path": path, "arch": meta["arch"], "options": meta.get("options", {}), "layers": layers,
            "totals": {"file_bytes": file_bytes, "payload_bytes": payload, "overhead_bytes": file_bytes - payload,
                       "theoretical_bytes": theory / 8, "shannon_code_bytes": sum(r["shannon_bits"] for r in layers) / 8,
                       "numel": sum(row["numel"] for row in layers), "fp32_bytes": fp32_bytes,
                       "ratio_vs_fp32": fp32_bytes / file_bytes}}


def inspect(path) -> dict:
    """The size report of a `.dsz` file (checks the container and metadata, not every payload)."""
    from .format import read_container

    meta, _, file_bytes = read_container(path)
    try:
        return build_report(meta, file_bytes, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        from ..errors import PackFormatError

        raise PackFormatError(f"{path}: metadata is malformed: {exc!r}") from None


def format_report(report: dict) -> str:
    """A fixed-width table of the report."""
    lines = [f"{'layer':<34} {'encoding':<34} {'values':>9} {'bits/w':>7} {'bytes':>9} {'share':>6}"]
    for row in report["layers"]:
        lines.append(f"{row['name'][:34]:<34} {row['encoding'][:34]:<34} {row['numel']:>9} "
                     f"{row['bits_per_weight']:>7.3f} {row['bytes']:>9} {100 * row['share']:>5.1f}%")
    t = report["totals"]
    lines.append(f"total {t['file_bytes']} bytes ({t['numel']} values, {8 * t['file_bytes'] / max(t['numel'], 1):.3f} "
                 f"bits/value); payload {t['payload_bytes']}, container {t['overhead_bytes']}; "
                 f"fp32 {t['fp32_bytes']} bytes -> ratio {t['ratio_vs_fp32']:.2f}x")
    if t["shannon_code_bytes"]:
        lines.append(f"code streams' Shannon bound: {t['shannon_code_bytes']:.0f} bytes")
    return "\n".join(lines)
