"""Fixtures for the data tests: a private cache folder so tests never touch (or trust) the user's."""
from __future__ import annotations

import pytest


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Point deepshrink's cache (decoded folders, subset index files) at a fresh temporary folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSHRINK_CACHE", str(cache))
    return cache
