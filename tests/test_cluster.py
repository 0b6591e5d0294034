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
                   if d.startswith("ray[default]=="))
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
    assert gpu["resources"] == {"CPU": 4, "GPU": 1}  # explicit resources
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert types["gpu.g4dn.12xlarge"]["min_workers"] == 0
    assert CFG["max_workers"] >= gpu["max_workers"]
    assert 0 < CFG["idle_timeout_minutes"] <= 30
    for name, spec in types.items():  # an instance profile on every node type
        assert spec["node_config"]["IamInstanceProfile"]["Name"], name
    head_cmd = " ".join(CFG["head_start_ray_commands"])
    assert "RAY_JOB_STOP_WAIT_TIME_S=" in head_cmd and "--num-gpus=0" in head_cmd


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
HELPERS = {("s3", "download_file"): "GetObject", ("s3", "upload_file"): "PutObject"}
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
