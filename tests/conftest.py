"""Shared fixtures: the real-data folder (skipped when absent) and an isolated results folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# CI runs each property test on a fixed sequence of examples, so a landing never depends on
# the luck of the draw; locally the draws stay random and keep finding new cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA} (read-only shared folder beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def results_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("LLMDS_RESULTS_DIR", str(folder))
    return folder
