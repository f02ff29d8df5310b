"""The `.dsz` file: a safetensors container (no pickle: loading a stranger's file cannot run code).

Layout: the safetensors header's ``__metadata__`` holds ``{"format": "deepshrink.dsz", "version": "1",
"meta_crc32": ...}``; the tensor ``__meta__`` holds the zlib-compressed metadata JSON (architecture,
packable modules parents-first with their registry names and `pack_config`, every encoded weight's
encoding, every other state-dict tensor's ref; see `payload` for refs); the remaining tensors are
the payload blobs ("codes" = all bit-packed code streams, "float32", "int64", ...).

Example::

    report = save(model, "model.dsz", float_dtype="fp16", entropy=True)
    model = load("model.dsz")
"""
from __future__ import annotations

import copy
import ctypes
import json
import os
import struct
import uuid
import zlib
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..encodings import decode_weight, encode_weight
from ..errors import PackFormatError, UserError
from ..nn.attention import split_attention
from ..nn.compressed import decode_weights, set_module
from ..nn.packable import Packable
from ..progress import Progress
from ..registry import MODELS, PACKABLE, create_model
from .graph import build_graph_module, pending_modules, record_graph, trace
from .payload import PayloadReader, PayloadWriter, _fail, crc

FORMAT = "deepshrink.dsz"
VERSION = 1
META_TENSOR = "__meta__"
_MAX_META_BYTES = 64 << 20
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # `save`'s float_dtype


def packable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Packable module, parents before children (named_modules is pre-order)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, Packable)]


def _check_rebuildable(model: nn.Module, arch: dict, packable_paths: list[str]) -> None:
    """Every module outside a packable one must be what the architecture builds, or load cannot rebuild it."""
    reference = dict(split_attention(create_model(arch["name"], **arch["kwargs"])).named_modules())
    for name, module in model.named_modules():
        inside = any(name == p or name.startswith(p + ".") or p == "" for p in packable_paths)
        if not inside and type(reference.get(name)) is not type(module):
            raise UserError(f"module {name!r} ({type(module).__name__}) is neither in architecture "
                            f"{arch['name']!r} nor a registered packable module; register it with "
                            "@register_packable so that deepshrink.load can rebuild it")


def _architecture(model: nn.Module) -> tuple[nn.Module, dict]:
    """(the module to pack, its architecture record): a zoo model's registry name; otherwise the graph
    torch.fx traces (so the file opens without the model's code), or, for a model that cannot be traced
    but was built by `create_model` from a constructor the user registered, that registry name."""
    arch = getattr(model, "deepshrink_arch", None)
    named = isinstance(arch, dict) and "name" in arch
    if named:
        arch = {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
        if arch["name"] in MODELS and MODELS.get(arch["name"]).__module__.startswith("deepshrink."):
            # load rebuilds attention split (as compress leaves it): an uncompressed model is packed that way too
            if any(type(m) is nn.MultiheadAttention for m in model.modules()):
                model = split_attention(copy.deepcopy(model))
            return model, arch
    try:
        traced = trace(model)
        return traced, {"graph": record_graph(traced)}
    except UserError:
        if named:
            return model, arch
        raise


def _collect(model: nn.Module) -> tuple[list[dict], dict]:
    modules, encoded = [], {}
    for path, module in packable_modules(model):
        name = getattr(module, "packable_name", None)
        if name is None or name not in PACKABLE or PACKABLE.get(name) is not type(module):
            raise UserError(f"module {path!r} ({type(module).__name__}) is Packable but not registered under "
                            "its own name; decorate its class with @register_packable(name)")
        if not path:
            raise UserError("the model itself is a packable module; pack a model that contains it instead")
        modules.append({"path": path, "type": name, "config": module.pack_config()})
        for key, weight in module.encoded_tensors().items():
            encoded[f"{path}.{key}"] = weight
    return modules, encoded


def build_payload(model: nn.Module, float_dtype: str = "fp32", ternary_base3: bool = False,
                  entropy: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and the blobs of `model` (what `save` writes)."""
    if float_dtype not in FLOAT_DTYPES:
        raise UserError(f"float_dtype must be one of {sorted(FLOAT_DTYPES)}, got {float_dtype!r}")
    model, arch = _architecture(model)  # a traced model packs as its GraphModule (same modules and tensors)
    modules, encoded = _collect(model)
    if "name" in arch:
        _check_rebuildable(model, arch, [m["path"] for m in modules])
    writer = PayloadWriter(entropy=entropy, ternary_base3=ternary_base3)
    dtype = FLOAT_DTYPES[float_dtype]
    meta = {"format": FORMAT, "version": VERSION, "arch": arch, "modules": modules,
            "options": {"float_dtype": float_dtype, "ternary_base3": ternary_base3, "entropy": entropy},
            "encoded": {}, "tensors": {}}
    with Progress("pack", len(encoded), "weight") as progress:  # entropy coding a large model takes a while
        for key, weight in encoded.items():
            progress.item(key)
            meta["encoded"][key] = encode_weight(weight, writer, key, dtype)
            progress.update()
    for key, value in model.state_dict().items():
        if key not in encoded:
            value = value.to(dtype) if value.is_floating_point() else value
            meta["tensors"][key] = writer.tensor(value)
    return meta, writer.blobs()


def to_bytes(meta: dict, blobs: dict[str, torch.Tensor]) -> bytes:
    packed_meta = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    tensors = dict(blobs)
    tensors[META_TENSOR] = torch.frombuffer(bytearray(packed_meta), dtype=torch.uint8)
    header = {"format": FORMAT, "version": str(VERSION), "meta_crc32": str(crc(packed_meta))}
    return safetensors.torch.save(tensors, metadata=header)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(model: nn.Module, path, float_dtype: str = "fp32", ternary_base3: bool = False,
         entropy: bool = False, data: dict | None = None) -> dict:
    """Pack `model` (inference form) into `path`; returns the size report.

    The file records the architecture: a zoo model's registry name, otherwise the graph torch.fx traces
    (see `graph`), so that `load` rebuilds the model without its code.

    float_dtype: "fp32" | "fp16" | "bf16" for float tensors; ternary_base3: 1.6-bit ternary codes;
    entropy: entropy-code each code stream (zstd or rANS, whichever is smaller) when it saves bytes.
    data: what the model takes, recorded for `deepshrink eval` / `speed` to default to: {"name": data set,
    "input_shape": [C, H, W], "mean": [...], "std": [...], "num_classes": N} (JSON values only).
    """
    from .report import build_report

    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    meta, blobs = build_payload(model, float_dtype, ternary_base3, entropy)
    if data is not None:
        meta["data"] = json.loads(json.dumps(data))  # JSON values only, as the file will hold them
    content = to_bytes(meta, blobs)
    atomic_write(path, content)
    return build_report(meta, len(content), str(path))


def recorded_data(path) -> dict:
    """The data set a `.dsz` file records (see `save`'s `data`); {} when it records none."""
    meta, _, _ = read_container(path)
    data = meta.get("data")
    return data if isinstance(data, dict) else {}


def read_container(path) -> tuple[dict, dict[str, torch.Tensor], int]:
    """(metadata, blobs, file size) of a `.dsz` file, checking the container, version and checksums."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    data = path.read_bytes()
    what = _foreign_kind(data)
    if what:
        raise PackFormatError(f"{path} is not a .dsz file: it is {what}; give a file written by deepshrink.pack "
                              "or `deepshrink compress`")
    if len(data) < 8 or struct.unpack("<Q", data[:8])[0] > len(data) - 8:
        raise PackFormatError(f"{path}: truncated: the safetensors header runs past the end of the file")
    try:
        header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
        info = header.get("__metadata__") or {}
        blobs = safetensors.torch.load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed file
        raise PackFormatError(f"{path}: not a readable safetensors container (truncated or corrupt): {exc}") from None
    if info.get("format") != FORMAT:
        raise PackFormatError(f"{path}: not a deepshrink packed model (format {info.get('format')!r})")
    if info.get("version") != str(VERSION):
        raise PackFormatError(f"{path}: format version {info.get('version')!r} is not supported; "
                              f"this deepshrink reads version {VERSION}")
    packed_meta = blobs.pop(META_TENSOR, None)
    if packed_meta is None or packed_meta.dtype != torch.uint8:
        raise PackFormatError(f"{path}: the metadata tensor {META_TENSOR!r} is missing")
    packed_meta = packed_meta.numpy().tobytes()
    if str(crc(packed_meta)) != info.get("meta_crc32"):
        raise PackFormatError(f"{path}: metadata checksum mismatch: the metadata is corrupted")
    try:
        decompressor = zlib.decompressobj()
        meta = json.loads(decompressor.decompress(packed_meta, _MAX_META_BYTES))
    except Exception as exc:  # noqa: BLE001
        raise PackFormatError(f"{path}: metadata does not decode: {exc}") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise PackFormatError(f"{path}: metadata version {meta.get('version') if isinstance(meta, dict) else None!r} "
                              f"is not supported; this deepshrink reads version {VERSION}")
    return meta, blobs, len(data)


def _get_module_or_none(model: nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _check_same_shapes(replaced: nn.Module | None, module: nn.Module, path: str) -> None:
    """A packable module must keep the shapes of the architecture's module it replaces."""
    if replaced is None:
        return
    before = {key: tuple(value.shape) for key, value in replaced.state_dict().items()}
    for key, value in module.state_dict().items():
        if key in before and before[key] != tuple(value.shape):
            _fail(f"{path}.{key}", f"shape {list(value.shape)} does not match the architecture's {list(before[key])}")


def _rebuild(meta: dict) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The architecture with every recorded packable module in place, its tensors still to be filled.

    Built on the meta device and then given empty CPU storage, so that loading never allocates the
    float model's weights only to drop them (those short-lived buffers fragment the heap: each loaded
    copy would then cost several times its own size). A model that the meta device cannot build, or
    that holds tensors outside its state dict (which the file cannot fill), is built on the CPU.
    """
    try:
        with torch.device("meta"):
            model, modules = _build(meta)
        model.to_empty(device="cpu")
        if not any(_holds_unfilled_tensor(module) for module in model.modules()):
            return model, modules
    except Exception:  # noqa: BLE001 - the CPU build below reports a bad file properly
        pass
    return _build(meta)


def _holds_unfilled_tensor(module: nn.Module) -> bool:
    """A tensor the file does not fill: a non-persistent buffer, or a meta tensor in a plain attribute."""
    if module._non_persistent_buffers_set:
        return True
    for value in vars(module).values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, torch.Tensor) and v.is_meta for v in values):
            return True
    return False


def _build(meta: dict) -> tuple[nn.Module, dict[str, nn.Module]]:
    arch = meta.get("arch")
    if isinstance(arch, dict) and set(arch) == {"graph"}:
        model = build_graph_module(arch["graph"])
    elif not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs"), dict):
        _fail("architecture", f"expected {{'name': str, 'kwargs': dict}} or {{'graph': dict}}, "
                              f"found {str(arch)[:200]}")
    elif arch["name"] not in MODELS:
        _fail(f"architecture {arch['name']!r}", "is not a registered model in this process; import the code that "
                                                "registers its constructor with @register_model")
    else:
        try:
            model = split_attention(create_model(arch["name"], **arch["kwargs"]))  # as compress() left it
        except Exception as exc:  # noqa: BLE001
            _fail(f"architecture {arch['name']!r}", f"cannot be built: {exc}")
    records = meta.get("modules")
    if not isinstance(records, list):
        _fail("modules", "must be a list")
    modules = {}
    for record in sorted(records, key=lambda r: str(r.get("path", "")).count(".") if isinstance(r, dict) else 0):
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
            _fail("modules", f"bad module record {record!r}")
        path = record["path"]
        try:
            module = PACKABLE.get(record.get("type")).from_pack_config(record.get("config"))
            replaced = _get_module_or_none(model, path)
            set_module(model, path, module)
        except Exception as exc:  # noqa: BLE001
            _fail(f"module {path!r}", f"cannot rebuild {record.get('type')!r}: {exc}")
        _check_same_shapes(replaced, module, path)
        modules[path] = module
    for path in pending_modules(model):
        _fail(f"module {path!r}", "the graph calls it as a packable module, but the file records none")
    return model, modules


def release_scratch() -> None:
    """Hand the heap pages that loading freed back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Unpacking codes goes through short-lived int64 arrays many times the size of the codes; glibc keeps
    the freed pages, so each loaded ResNet-20 would hold ~2.7x more resident memory than it uses
    (benchmarks/results/resident_memory_*.json, before and after the trim)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def load(path, decode: bool = False) -> nn.Module:
    """Rebuild the model stored in a `.dsz` file (eval mode). Raises PackFormatError on a bad file.

    Compressed layers keep their codes resident and decode them on each call (see
    `deepshrink.nn.compressed`); `decode=True` gives them trainable float weights instead.
    """
    meta, blobs, _ = read_container(path)
    reader = PayloadReader(blobs)
    try:
        model, modules = _rebuild(meta)
        encoded = meta.get("encoded")
        tensors = meta.get("tensors")
        if not isinstance(encoded, dict) or not isinstance(tensors, dict):
            _fail("metadata", "'encoded' and 'tensors' must be objects")
        for key, enc_meta in encoded.items():
            module_path, _, attr = key.rpartition(".")
            module = modules.get(module_path)
            if module is None:
                _fail(key, f"no packable module {module_path!r} in the file holds it")
            current = module.state_dict().get(attr)
            # a resident layer holds no float tensor for it, but says its shape (e.g. `weight_shape`)
            shape = tuple(current.shape) if current is not None else getattr(module, f"{attr}_shape", None)
            weight = decode_weight(enc_meta, reader, key, shape)
            try:
                module.load_encoded(attr, weight)
            except Exception as exc:  # noqa: BLE001
                _fail(key, f"the module rejects it: {exc}")
        for module_path, module in modules.items():
            for attr in module.encoded_tensors():
                if f"{module_path}.{attr}" not in encoded:
                    _fail(f"{module_path}.{attr}", "the file holds no codes for it")
        state = model.state_dict()
        expected = set(state) - set(encoded)
        if expected != set(tensors):
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            _fail("state", f"does not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, ref in tensors.items():
            value = reader.tensor(ref, key)
            if value.shape != state[key].shape:
                _fail(key, f"shape {list(value.shape)} does not match the architecture's {list(state[key].shape)}")
            state[key] = value
        model.load_state_dict(state, strict=True)
        if decode:
            decode_weights(model)
        del meta, blobs, reader, state
        release_scratch()
    except PackFormatError as exc:
        raise PackFormatError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - never let a bad file surface as anything else
        raise PackFormatError(f"{path}: {type(exc).__name__}: {exc}") from None
    return model.eval()


def _foreign_kind(data: bytes) -> str | None:
    """What a file that is clearly not a .dsz is (None when it may be one: then the checks say what is wrong)."""
    if not data:
        return "empty"
    if data.startswith(b"PK"):
        return "a zip archive (a torch.save checkpoint? load it with --base, or `deepshrink eval --checkpoint`)"
    if data[:1] == b"\x80":
        return "a Python pickle"
    if data[:1] == b"\x08" and (b"onnx" in data[:200] or b"pytorch" in data[:200]):
        return "an ONNX model"
    head = data[:64]
    if len(data) >= 8 and not head.startswith(b"{") and struct.unpack("<Q", data[:8])[0] > len(data) \
            and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return None
