"""Shared fixtures: seeded generators, the real Gaia data in ../shared/data, a local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Ray 2.60 turns on token auth for new local clusters; tests run without it (DESIGN 7).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("RAY_APP_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data",
                                                 REPO / "shared" / "data"]:
        if (cand / "gd1_dr2_widefield.parquet").exists():
            return cand
    raise FileNotFoundError(
        "real Gaia test data not found: expected ../shared/data/gd1_dr2_widefield.parquet "
        "next to the repository (or set RAY_APP_SHARED_DATA)")


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def gd1_field(shared_data):
    import pyarrow.parquet as pq

    t = pq.read_table(shared_data / "gd1_dr2_widefield.parquet")
    members = pq.read_table(shared_data / "gd1_dr2_members.parquet")
    return t, members


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
