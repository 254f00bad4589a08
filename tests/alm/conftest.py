"""Fixtures for the supervisor's tests."""

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``ALM_*``/``PORT``/binding variables from the caller's environment: settings start from defaults."""
    for name in list(os.environ):
        if name.startswith("ALM_") or name in ("PORT", "VLLM_CPU_OMP_THREADS_BIND", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name)
    return monkeypatch
