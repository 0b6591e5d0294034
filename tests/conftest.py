"""Fixtures: seeded generators, the real Gaia data shipped in tests/data, a local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Ray 2.60 turns on token auth for new local clusters; tests run without it (DESIGN 7).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Nothing a test runs may write into the checkout or the user's data folder: module-scoped
# fixtures run before the per-test RAY_APP_HOME below, so the session gets one too.
os.environ["RAY_APP_HOME"] = tempfile.mkdtemp(prefix="ray-app-tests-")
# hypothesis keeps caches in ./.hypothesis unless told otherwise
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tempfile.mkdtemp(prefix="ray-app-hypothesis-")

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """The real Gaia tables (tests/data, see its README); ``RAY_APP_SHARED_DATA`` overrides."""
    env = os.environ.get("RAY_APP_SHARED_DATA")
    path = Path(env) if env else REPO / "tests" / "data"
    if not (path / "gd1_dr2_widefield.parquet").exists():
        raise FileNotFoundError(f"real Gaia test data not found in {path} (tests/data ships "
                                "it; RAY_APP_SHARED_DATA overrides)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_dir()


@pytest.fixture(scope="session")
def gd1_field(real_data):
    import pyarrow.parquet as pq

    t = pq.read_table(real_data / "gd1_dr2_widefield.parquet")
    members = pq.read_table(real_data / "gd1_dr2_members.parquet")
    return t, members


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- AWS (moto server mode)
@pytest.fixture(scope="session")
def moto_server():
    """moto's server on 127.0.0.1 (a real socket); boto3 finds it through AWS_ENDPOINT_URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def aws(moto_server):
    """Fresh queue (+DLQ), bucket and table for one test (moto state reset first)."""
    import urllib.request

    from ray_app.io.provision import ServiceNames, provision

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset",
                                                  method="POST")).read()
    names = ServiceNames(queue="ray-app-jobs", bucket="ray-app-results", table="ray-app-jobs",
                         visibility_s=30)
    out = provision(names)
    return {"names": names, "endpoint": moto_server, **out}


@pytest.fixture(autouse=True)
def _local_home(tmp_path, monkeypatch):
    """The embedded local mode's status store and results stay inside each test's tmp dir."""
    monkeypatch.setenv("RAY_APP_HOME", str(tmp_path / "ray-app-home"))
