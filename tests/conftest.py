"""Shared fixtures: where the real data of ../shared/data lives, and a skip when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT and 3D-RAD files; tests that need them skip (with the reason) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (clone with ../shared beside the repo)")
    return SHARED_DATA
