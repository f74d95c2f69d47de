"""Shared fixtures: the real-data folder (skipped when absent) and an isolated results folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
