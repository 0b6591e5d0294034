"""cluster.yaml passes Ray's validation and keeps its promises; IAM policies are exact."""

import ast
import copy
import json
import re
import tomllib
from pathlib import Path

import botocore.session
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CFG = yaml.safe_load((REPO / "cluster.yaml").read_text())
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = next(d.split("==")[1] for d in PYPROJECT["project"]["dependencies"]
                   if d.startswith("ray[") and "==" in d)
VERSION = PYPROJECT["project"]["version"]


def test_ray_validates_the_config_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(CFG)))


def test_node_types_and_scaling():
    types = CFG["available_node_types"]
    head = types[CFG["head_node_type"]]
    assert head["resources"]["GPU"] == 0  # no GPU work on the head
    gpu = types["gpu.g4dn.xlarge"]
    assert gpu["node_config"]["InstanceType"] == "g4dn.xlarge"
    assert gpu["resources"] == {"CPU": 0, "GPU": 1}  # explicit; no CPU: only GPU work lands
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert types["gpu.g4dn.12xlarge"]["min_workers"] == 0
    for name, spec in types.items():  # no GPU node type advertises a CPU (Ray issue 47866)
        if spec["resources"].get("GPU", 0) > 0:
            assert spec["resources"]["CPU"] == 0, name
    # several zones: the AWS provider tries each zone's subnet before a launch fails
    assert len(CFG["provider"]["availability_zone"].split(",")) >= 3
    assert CFG["max_workers"] >= gpu["max_workers"]
    assert 0 < CFG["idle_timeout_minutes"] <= 30
    for name, spec in types.items():  # an instance profile on every node type
        assert spec["node_config"]["IamInstanceProfile"]["Name"], name
    head_cmd = " ".join(CFG["head_start_ray_commands"])
    assert "RAY_JOB_STOP_WAIT_TIME_S=" in head_cmd and "--num-gpus=0" in head_cmd


def _nodes_for(demand, max_workers=None, existing=None):
    """What Ray's autoscaler (v1 resource demand scheduler) would add for ``demand``."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_nodes_for,
    )

    types = copy.deepcopy(CFG["available_node_types"])
    for name, n in (max_workers or {}).items():
        types[name]["max_workers"] = n

    def scorer(resources, demands, node_type):
        return _default_utilization_scorer(
            resources, demands, node_type,
            node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))

    added, left = get_nodes_for(types, existing or {}, CFG["head_node_type"], 100, demand,
                                scorer)
    return dict(added), left


def test_autoscaler_places_gpu_demand_on_g4dn_first_and_cpu_demand_never_on_gpu_nodes():
    gpu = {"GPU": 1}
    # the default config: every GPU bundle becomes a g4dn.xlarge, nothing else
    assert _nodes_for([gpu] * 3) == ({"gpu.g4dn.xlarge": 3}, [])
    # the fallback type enabled: g4dn stays first; g5 only beyond g4dn's max_workers
    added, left = _nodes_for([gpu] * 10, {"gpu.fallback.g5.xlarge": 4})
    assert added == {"gpu.g4dn.xlarge": 8, "gpu.fallback.g5.xlarge": 2} and not left
    # CPU-only demand fits no GPU node type (they advertise CPU: 0)
    added, left = _nodes_for([{"CPU": 1}] * 4, {"gpu.fallback.g5.xlarge": 4})
    assert not any(name.startswith("gpu.") for name in added)


def test_working_dir_upload_is_small():
    """`ray job submit --working-dir .` zips what .gitignore and .rayignore let through: no
    .git, venv or results (Ray's limit is 100 MiB, HTTP 413 beyond)."""
    import tempfile
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as tmp:
        # a user's checkout in miniature, with the repository's ignore files
        fake = Path(tmp) / "checkout"
        for rel in (".git/objects/ab", ".venv/lib/site.py", "results/gd1/stars.parquet",
                    "tests/data/x.parquet", "ray_app/cli.py", "jobs/consume.py",
                    "catalogue.parquet"):
            (fake / rel).parent.mkdir(parents=True, exist_ok=True)
            (fake / rel).write_text("x")
        for name in (".gitignore", ".rayignore"):
            (fake / name).write_text((REPO / name).read_text())
        create_package(str(fake), Path(tmp) / "fake.zip", include_gitignore=True)
        fake_names = set(zipfile.ZipFile(Path(tmp) / "fake.zip").namelist())
        # and the real checkout, read only
        create_package(str(REPO), Path(tmp) / "real.zip", include_gitignore=True)
        names = zipfile.ZipFile(Path(tmp) / "real.zip").namelist()
        size = (Path(tmp) / "real.zip").stat().st_size
    assert {"ray_app/cli.py", "jobs/consume.py", "catalogue.parquet"} <= fake_names  # inputs
    assert not {n for n in fake_names if n.split("/")[0] in {".git", ".venv", "results"}}, \
        fake_names
    assert "tests/data/x.parquet" in fake_names  # the README's examples read tests/data
    tops = {n.split("/")[0] for n in names}
    assert {"ray_app", "jobs", "pyproject.toml", "constraints.txt"} <= tops
    for unwanted in (".git", ".venv", ".pytest_cache"):
        assert unwanted not in tops, unwanted
    assert size < 5 * 2**20, f"upload of {size / 2**20:.1f} MiB"


def test_versions_are_pinned_to_pyproject():
    assert CFG["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert f"FROM {CFG['docker']['image']}" in dockerfile
    setup = " ".join(CFG["setup_commands"])
    assert "constraints.txt" in setup and f"== '{VERSION}'" in setup
    constraints = (REPO / "constraints.txt").read_text()
    assert f"ray=={RAY_VERSION}" in constraints


# ----------------------------------------------------------------------------- IAM
# API operation -> IAM action where the two names differ
IAM_NAME = {"s3:ListObjectsV2": "s3:ListBucket", "s3:HeadBucket": "s3:ListBucket",
            "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
            "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
            "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
            "s3:DeleteObjects": "s3:DeleteObject", "s3:HeadObject": "s3:GetObject"}
# high-level helpers -> the operation they perform
HELPERS = {("s3", "download_file"): "GetObject", ("s3", "upload_file"): "PutObject",
           ("s3", "generate_presigned_url"): "GetObject"}  # signs a GetObject for others
CLIENTS = ("sqs", "s3", "dynamodb")


def _api_names(service):
    model = botocore.session.get_session().get_service_model(service)
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower(): op for op in model.operation_names}


def collect_aws_actions(paths):
    """IAM actions of every boto3 call on a client named sqs/s3/dynamodb in these files."""
    api = {s: _api_names(s) for s in CLIENTS}
    api["s3"]["list_objects_v2"] = "ListObjectsV2"
    actions = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            recv = node.func.value
            service = recv.attr if isinstance(recv, ast.Attribute) else getattr(recv, "id", None)
            if isinstance(recv, ast.Call) and getattr(recv.func, "attr", "") == "client":
                service = recv.args[0].value
            if service not in CLIENTS:
                continue
            method = node.func.attr
            if method in ("get_paginator", "get_waiter"):
                arg = node.args[0].value
                op = "DescribeTable" if arg == "table_exists" else api[service][arg]
            elif (service, method) in HELPERS:
                op = HELPERS[(service, method)]
            else:
                assert method in api[service], f"{path}: {service}.{method} is not an API call"
                op = api[service][method]
            action = f"{service}:{op}"
            actions.add(IAM_NAME.get(action, action))
    return actions


def policy_actions(name):
    doc = json.loads((REPO / "cluster" / name).read_text())
    out = set()
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow" and "*" not in json.dumps(st["Action"])
        out |= set([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    return out


PROVISION = [REPO / "ray_app" / "io" / "provision.py"]
RUNTIME = [p for p in (REPO / "ray_app").rglob("*.py") if p not in PROVISION]


@pytest.mark.parametrize("policy,files", [("iam-node-policy.json", RUNTIME),
                                          ("iam-provision-policy.json", PROVISION)])
def test_iam_policy_covers_exactly_the_calls_the_code_makes(policy, files):
    used = collect_aws_actions(files)
    granted = policy_actions(policy)
    assert used, "the scan found no AWS call: the collector is broken"
    assert used - granted == set(), f"{policy} misses {sorted(used - granted)}"
    assert granted - used == set(), f"{policy} grants unused {sorted(granted - used)}"


def test_policy_resources_are_scoped():
    for name in ("iam-node-policy.json", "iam-provision-policy.json"):
        doc = json.loads((REPO / "cluster" / name).read_text())
        for st in doc["Statement"]:
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            for r in res:
                assert r != "*" and ("${QUEUE_NAME}" in r or "${TABLE_NAME}" in r
                                     or "${BUCKET_NAME}" in r), (name, r)
