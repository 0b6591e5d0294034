"""The API on Ray Serve: ``ray-app serve`` end to end (a POSTed job runs to COMPLETED on the
local driver) and the cluster's Serve config."""

import time
from pathlib import Path

import requests
import yaml
from api_server import ray_app_serve

REPO = Path(__file__).resolve().parents[1]


def test_the_cluster_serve_config_is_valid_and_names_our_app():
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from ray_app.api import deployment

    cfg = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    app = ServeDeploySchema.model_validate(cfg).applications[0]
    module, _, attr = app.import_path.partition(":")
    assert module == deployment.__name__ and isinstance(getattr(deployment, attr),
                                                        serve.Application)
    (dep,) = app.deployments
    assert dep.name == deployment.ApiDeployment.name
    assert dep.ray_actor_options.num_cpus == 0  # never holds a slot a GPU node needs
    assert "node:__internal_head__" in dep.ray_actor_options.resources  # pinned to the head
    env = app.runtime_env["env_vars"]
    assert {"QUEUE_URL", "TABLE_NAME", "BUCKET_NAME"} <= set(env)
    assert set(env) <= set(deployment.FORWARDED_ENV)


def test_ray_app_serve_runs_a_posted_job_to_completed(tmp_path):
    with ray_app_serve(tmp_path / "home") as (url, key, proc):
        auth = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{url}/health").json()["mode"] == "local"
        r = requests.post(f"{url}/jobs", headers=auth, json={
            "jobId": "served", "streamKey": "gd-1", "nNeighbors": 8, "nBackground": 2000,
            "nStream": 200})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = requests.get(f"{url}/jobs/served", headers=auth).json()
            if job["status"] in ("COMPLETED", "FAILED"):
                break
            time.sleep(1)
        assert job["status"] == "COMPLETED", job
        assert job["params"]["submittedBy"] == "tester"
        files = requests.get(f"{url}/jobs/served/results", headers=auth).json()["files"]
        link = {f["name"]: f["url"] for f in files}["summary.png"]
        assert requests.get(url + link, headers=auth).content[:4] == b"\x89PNG"
    assert proc.returncode == 0
