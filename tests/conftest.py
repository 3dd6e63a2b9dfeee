"""Shared test settings: the real data folder (GPO_BENCH_DATA, else ../shared/data beside the
checkout) and an embedding cache shared by the whole session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GPO_BENCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "opinionqa").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set GPO_BENCH_DATA to the shared data folder)")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """One embedding cache for the session, so MiniLM encodes each text once."""
    cache = tmp_path_factory.mktemp("embedding-cache")
    os.environ["GPO_BENCH_CACHE"] = str(cache)
    return cache
