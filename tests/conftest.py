"""Shared fixtures: the repository root and smoke-sized configs with absolute paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketamine_pmx.config import load_config

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = REPO / "data" / "truth" / "ketamine_virtual_trial.yaml"


def make_config(**simulation) -> dict:
    """The smoke config with an absolute parameter path and optional simulation overrides."""
    overrides = {"simulation": {"parameters": str(PARAMETERS), **simulation}}
    return load_config(REPO / "config" / "smoke.yaml", overrides)


@pytest.fixture
def smoke_config() -> dict:
    return make_config()
