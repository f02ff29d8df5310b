"""Published accuracy drops for the methods we benchmark: the seed re-implementations' and papers'.

These are *their* numbers on *their* data and networks (mostly ResNet-20 on CIFAR-10), shown beside
ours for orientation only; the report marks them as published. Source: the tables of the project's
issues 3 (QAT), 4 (layer-wise) and 6 (FBS). A suite row may give its own `published:` instead.
"""
from __future__ import annotations

# method -> list of (parameter constraints on the resolved recipe params, drop in points, source)
PUBLISHED: dict[str, list[tuple[dict, float, str]]] = {
    "bwn": [({}, 1.2, "re-implementation (seed repository), ResNet-20 / CIFAR-10, 100 epochs")],
    "twn": [({}, 1.2, "re-implementation (seed repository), ResNet-20 / CIFAR-10")],
    "ttq": [({}, 1.2, "re-implementation (seed repository), ResNet-20 / CIFAR-10")],
    "xnor": [({}, 12.85, "re-implementation (seed repository), ResNet-20 / CIFAR-10, W1/A1")],
    "dorefa": [
        ({"weight_bits": 1, "act_bits": 32}, 1.8, "re-implementation (seed repository), ResNet-20 / CIFAR-10, W1/A32"),
        ({"weight_bits": 2, "act_bits": 2}, 16.3, "re-implementation (seed repository), ResNet-20 / CIFAR-10, W2/A2"),
        ({"weight_bits": 4, "act_bits": 4}, 2.4, "re-implementation (seed repository), ResNet-20 / CIFAR-10, W4/A4"),
        ({"weight_bits": 1, "act_bits": 1}, 32.08,
         "re-implementation (seed repository), ResNet-20 / CIFAR-10 from scratch, 100 epochs, W1/A1 (61.37 of 93.45)"),
        ({"weight_bits": 8, "act_bits": 8}, 1.25,
         "re-implementation (seed repository), ResNet-20 / CIFAR-10 from scratch, 100 epochs, W8/A8 (92.2 of 93.45)"),
    ],
    "ldnq": [({"levels": 7}, 5.55, "re-implementation (seed repository), ResNet-20 / CIFAR-10, its '3-bit' setting")],
    "pq": [({}, 3.95, "paper (Stock et al. 2020), ResNet-18 / ImageNet, at 29x")],
    "fbs": [({}, 3.0, "re-implementation (seed repository), ResNet-20 / CIFAR-10, keep ratio 0.5")],
}


def published_drop(record: dict) -> dict | None:
    """The published {drop, source} matching a result record's method and parameters, if any.

    A row's own `published` entry wins. Parameters are matched against the resolved recipe's
    global `params` (missing parameters never match a constraint).

    Example::

        published_drop({"method": "dorefa", "settings": {"recipe": {"params": {"weight_bits": 2,
                        "act_bits": 2}}}})  # -> {"drop": 16.3, "source": "re-implementation ..."}
    """
    if isinstance(record.get("published"), dict):
        return record["published"]
    method = str(record.get("method", "")).lower()
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    recipe = settings.get("recipe") if isinstance(settings.get("recipe"), dict) else {}
    params = recipe.get("params") if isinstance(recipe.get("params"), dict) else {}
    for constraints, drop, source in PUBLISHED.get(method, []):
        if all(params.get(k) == v for k, v in constraints.items()):
            return {"drop": drop, "source": source}
    return None
