"""`ray-app submit/status/jobs/results/dlq/provision/teardown` against moto's server."""

import json
import threading

import boto3
import pytest

from ray_app.cli import EXIT_BAD_INPUT, main
from ray_app.engine.engines import InProcessEngine
from ray_app.io.provision import ServiceNames, provision
from ray_app.service import service_from_env
from ray_app.service.driver import Driver, DriverConfig


@pytest.fixture
def env(aws, monkeypatch):
    monkeypatch.setenv("QUEUE_URL", aws["queue_url"])
    monkeypatch.setenv("TABLE_NAME", aws["table"])
    monkeypatch.setenv("BUCKET_NAME", aws["bucket"])
    return aws


def _drain(aws):
    svc = service_from_env()
    d = Driver(svc.queue, svc.status, svc.results, InProcessEngine("cpu"),
               DriverConfig(wait_s=1, visibility_s=10, heartbeat_s=1, lease_s=10))
    t = threading.Thread(target=d.run, kwargs={"max_idle_polls": 2})
    t.start()
    t.join(300)


def test_submit_status_jobs_results(env, capsys, tmp_path):
    assert main(["submit", "gd-1", "--job-id", "cli-1", "--n-neighbors", "8",
                 "--sigma-threshold", "4"]) == 0
    assert capsys.readouterr().out.strip() == "cli-1"
    assert main(["status", "cli-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "PENDING"
    _drain(env)
    assert main(["status", "cli-1", "--watch", "--interval", "0.1"]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["jobs", "--status", "COMPLETED"]) == 0
    assert "cli-1" in capsys.readouterr().out
    assert main(["results", "cli-1", "--to", str(tmp_path / "dl")]) == 0
    assert (tmp_path / "dl" / "manifest.json").exists()
    assert (tmp_path / "dl" / "candidates.json").exists()


def test_jobs_pages_with_a_cursor(env, capsys):
    for i in range(3):
        assert main(["submit", "gd-1", "--job-id", f"page-{i}"]) == 0
    capsys.readouterr()
    assert main(["jobs", "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["page-2", "page-1"]
    assert out[-1].startswith("more: ray-app jobs --limit 2 --cursor ")
    cursor = out[-1].rsplit(" ", 1)[1]
    assert main(["jobs", "--limit", "2", "--cursor", cursor, "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [r["jobId"] for r in page["jobs"]] == ["page-0"] and page["cursor"] is None
    assert main(["jobs", "--limit", "0"]) == EXIT_BAD_INPUT
    assert "limit must be an integer in [1, 1000], got 0" in capsys.readouterr().err
    assert main(["jobs", "--status", "PENDING", "--cursor", cursor]) == EXIT_BAD_INPUT
    assert "made for status=None" in capsys.readouterr().err


def test_submit_rejects_bad_input_before_anything(env, capsys):
    assert main(["submit", "gd-1", "--job-id", "../etc"]) == EXIT_BAD_INPUT
    assert "jobId must be" in capsys.readouterr().err
    assert main(["submit", "gd-1", "--n-neighbors", "0"]) == EXIT_BAD_INPUT
    assert main(["status", "nope"]) == EXIT_BAD_INPUT
    assert "not found" in capsys.readouterr().err
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=env["queue_url"],
                                     AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_dlq_list_and_redrive(env, capsys):
    svc = service_from_env()
    svc.queue.send('{"jobId": "dead-1", "streamKey": "nowhere"}')  # invalid: DLQ at once
    _drain(env)
    # a valid job that exhausted its retries (as the redrive policy leaves it)
    valid = {"jobId": "tired-1", "streamKey": "gd-1", "nNeighbors": 8, "nBackground": 400,
             "nStream": 100}
    assert svc.status.claim("tired-1", "d0", 60)
    assert svc.status.fail("tired-1", "gave up after 3 attempts", driver_id="d0")
    svc.queue.send(valid, url=svc.queue.dlq_url)
    assert main(["dlq"]) == 0
    out = capsys.readouterr().out
    assert "not a known stream" in out and "2 dead letter(s)" in out
    assert svc.status.get("dead-1")["status"] == "FAILED"
    assert main(["dlq", "--redrive"]) == 0
    out = capsys.readouterr().out
    assert "redrove 1" in out and "still invalid" in out
    assert svc.status.get("tired-1")["status"] == "PENDING"  # re-opened for a new attempt
    _drain(env)
    assert svc.status.get("tired-1")["status"] == "COMPLETED"
    assert [m.body for m, _ in svc.queue.list_dead(10)] == [
        '{"jobId": "dead-1", "streamKey": "nowhere"}']


def test_provision_is_idempotent_and_teardown_removes(moto_server, capsys):
    names = ServiceNames(queue="prov-q", bucket="prov-bucket", table="prov-table",
                         visibility_s=90)
    first = provision(names)
    assert set(first["report"].values()) >= {"created"}
    second = provision(names)
    assert set(second["report"].values()) == {"unchanged"}
    sqs, s3, ddb = boto3.client("sqs"), boto3.client("s3"), boto3.client("dynamodb")
    attrs = sqs.get_queue_attributes(QueueUrl=first["queue_url"],
                                     AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 3 and redrive["deadLetterTargetArn"].endswith(
        ":prov-q-dlq")
    assert attrs["VisibilityTimeout"] == "90"
    enc = s3.get_bucket_encryption(Bucket="prov-bucket")["ServerSideEncryptionConfiguration"]
    assert enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    pab = s3.get_public_access_block(Bucket="prov-bucket")["PublicAccessBlockConfiguration"]
    assert all(pab.values())
    rules = s3.get_bucket_lifecycle_configuration(Bucket="prov-bucket")["Rules"]
    assert rules[0]["Expiration"]["Days"] == 90
    ttl = ddb.describe_time_to_live(TableName="prov-table")["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "ttl"
    assert main(["teardown", "--queue", "prov-q", "--bucket", "prov-bucket", "--table",
                 "prov-table"]) == EXIT_BAD_INPUT  # needs --yes
    assert main(["teardown", "--queue", "prov-q", "--bucket", "prov-bucket", "--table",
                 "prov-table", "--yes"]) == 0
    assert "prov-q" not in " ".join(sqs.list_queues().get("QueueUrls", []))
    assert "prov-table" not in ddb.list_tables()["TableNames"]
    assert "prov-bucket" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    capsys.readouterr()
    assert main(["provision", "--queue", "prov-q", "--bucket", "prov-bucket", "--table",
                 "prov-table"]) == 0
    assert "QUEUE_URL=" in capsys.readouterr().out


def _one_line(capsys, code, argv, *needles):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ray-app: error:"), err
    for n in needles:
        assert n in err, err
    return err


def _queue_depth(aws):
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws["queue_url"], AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def test_submit_checks_the_input_it_can(env, capsys, tmp_path):
    local = tmp_path / "field.parquet"
    local.write_bytes(b"x")
    _one_line(capsys, EXIT_BAD_INPUT, ["submit", "gd-1", "--job-id", "in-1", "--input",
                                       str(local)], "local path", "s3://")
    _one_line(capsys, EXIT_BAD_INPUT, ["submit", "gd-1", "--job-id", "in-2", "--input",
                                       f"s3://{env['bucket']}/inputs/none.parquet"],
              "cannot be read", "404")
    svc = service_from_env()
    assert svc.status.get("in-1") is None and svc.status.get("in-2") is None
    assert _queue_depth(env) == 0


def test_submit_with_the_queue_unreachable_leaves_no_record(env, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    _one_line(capsys, 3, ["submit", "gd-1", "--job-id", "orphan-1"], "unreachable",
              "127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
    assert service_from_env().status.get("orphan-1") is None  # rolled back
    assert _queue_depth(env) == 0


def test_unreachable_aws_is_one_line(env, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    _one_line(capsys, 3, ["jobs"], "AWS endpoint unreachable", "local mode")
    _one_line(capsys, 3, ["provision", "--queue", "q", "--bucket", "my-bucket", "--table",
                          "t-1"], "AWS endpoint unreachable")


@pytest.mark.parametrize("argv,needle", [
    (["--bucket", "Bad_Bucket"], "--bucket 'Bad_Bucket' is not a valid S3 bucket name"),
    (["--bucket", "ab"], "--bucket 'ab'"),
    (["--queue", "has space"], "--queue 'has space'"),
    (["--table", "x"], "--table 'x'"),
])
def test_provision_refuses_invalid_names_before_any_call(capsys, argv, needle):
    base = {"--queue": "q", "--bucket": "my-bucket", "--table": "table-1"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    _one_line(capsys, EXIT_BAD_INPUT, ["provision", *[x for kv in base.items() for x in kv]],
              needle)


def test_unreachable_gaia_archive_is_one_line_and_a_failed_job(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_APP_GAIA_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("RAY_APP_GAIA_ATTEMPTS", "2")
    monkeypatch.setenv("RAY_APP_GAIA_BACKOFF_S", "0.01")
    err = _one_line(capsys, 3, ["recover", "gd-1", "--input", "gaia-dr3", "--engine",
                                "in-process", "--job-id", "gaia-down", "--out",
                                str(tmp_path / "o")], "Gaia archive is unavailable",
                    "Try again later")
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
    rec = service_from_env().status.get("gaia-down")
    assert rec["status"] == "FAILED" and "GaiaArchiveUnavailable" in rec["error"]
