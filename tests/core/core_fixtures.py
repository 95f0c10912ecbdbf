"""Shared fixtures of the core tests (imported by name: a second conftest.py would clash
with tests/torch/conftest.py when both folders run in one pytest process)."""

import pytest

from filterprune.core import importance, schedule


@pytest.fixture
def registries(monkeypatch):
    """Undo the schedules and importances a test registers, so names do not leak into
    other tests' messages and schemas."""
    monkeypatch.setattr(schedule, "_SCHEDULES", dict(schedule._SCHEDULES))
    monkeypatch.setattr(importance, "_IMPORTANCES", dict(importance._IMPORTANCES))
