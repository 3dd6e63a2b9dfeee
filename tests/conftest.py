"""Shared test settings: the real data folder (GPO_BENCH_DATA, else ../shared/data beside the
checkout), an embedding cache shared by the whole session, and OpenMP threads that wait passively
(as the CLI's default) unless OMP_WAIT_POLICY is set: with spinning threads the suite crawls on a
machine whose cores other jobs use."""

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before any test module imports torch

import pytest  # noqa: E402

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
