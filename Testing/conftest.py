"""Shared test fixtures: where the real images are, and small crops of them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: real images beside the checkout (see ../shared/data/README.md)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
#: real images bundled with the engine (copies of two of the above, with their license)
SAMPLES = REPO_ROOT / "DINSegmentation" / "dinseg" / "assets" / "sample"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test images are missing: expected {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA
