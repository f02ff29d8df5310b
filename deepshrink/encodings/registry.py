"""Encoding kind name -> its registered `Encoding` (one instance per kind).

A kind module registers its class with `@register_encoding`; `deepshrink.encodings` imports every kind
module, so every kind is registered before any `EncodedWeight` exists.

Example::

    @register_encoding
    class Binary(CodedEncoding):
        name = "binary"
        ...

    encoding_named("binary").code_range(weight)
"""
from __future__ import annotations

ENCODINGS: dict = {}


def register_encoding(cls):
    """Class decorator: register one instance of `cls` under `cls.name`."""
    if cls.name in ENCODINGS:
        raise ValueError(f"encoding {cls.name!r} is registered twice")
    ENCODINGS[cls.name] = cls()
    return cls


def kinds() -> tuple[str, ...]:
    """The registered kind names, in registration order."""
    return tuple(ENCODINGS)


def encoding_named(kind):
    """The registered `Encoding` called `kind`; ValueError naming the kinds otherwise."""
    try:
        return ENCODINGS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown encoding {kind!r}; one of {kinds()}") from None
