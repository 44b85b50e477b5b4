"""Shared fixtures: no test touches the user's home directory or inherits their settings."""

from __future__ import annotations

import pytest

_ENV = (
    "AUTORESEARCH_PROFILE",
    "AUTORESEARCH_SOURCE",
    "AUTORESEARCH_TIME_BUDGET",
    "AUTORESEARCH_BACKEND",
    "AUTORESEARCH_HF_ENDPOINT",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Point the cache at a tmp dir and clear every autoresearch setting."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    yield
