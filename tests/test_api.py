"""The HTTP API over a real socket: local mode (SQLite, local results) and AWS mode (moto's
server): auth and ownership, bad bodies, idempotent POST (also under concurrency), per-user
queue limits, rate limits, cancel in each state, results links, catalogue, queue, health."""

import threading

import pytest
import requests
from api_server import serving

from ray_app.api.app import Settings, create_app
from ray_app.api.keys import ApiKeys
from ray_app.engine.engines import InProcessEngine
from ray_app.io.status import COMPLETED
from ray_app.service import service_from_env
from ray_app.service.driver import Driver, DriverConfig

TINY = {"streamKey": "gd-1", "nNeighbors": 8, "nBackground": 300, "nStream": 60}


def _run_queue(svc):
    Driver(svc.queue, svc.status, svc.results, InProcessEngine("cpu"),
           DriverConfig(wait_s=1, visibility_s=30, heartbeat_s=2, lease_s=30)
           ).run(max_idle_polls=2)


@pytest.fixture
def keys():
    k = ApiKeys()
    return {"store": k, "ann": k.create("ann"), "bob": k.create("bob"),
            "root": k.create("root", admin=True)}


def _h(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def local_api(keys):
    svc = service_from_env()
    with serving(create_app(svc, keys["store"], Settings(rate=0, burst=1, max_queued=5))
                 ) as url:
        yield url, svc, keys


def test_keys_are_required_and_stored_hashed(local_api):
    url, _svc, keys = local_api
    r = requests.get(f"{url}/jobs")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{url}/jobs", headers=_h("rak_wrong")).status_code == 401
    assert requests.get(f"{url}/jobs", headers={"Authorization": keys["ann"]}
                        ).status_code == 401  # no scheme
    assert requests.get(f"{url}/jobs", headers=_h(keys["ann"])).status_code == 200
    text = open(keys["store"].location).read()
    assert keys["ann"] not in text and "sha256" in text
    assert keys["store"].revoke("ann") == 1
    assert requests.get(f"{url}/jobs", headers=_h(keys["ann"])).status_code == 401
    # no key needed: health, docs, the page
    assert requests.get(f"{url}/health").json()["status"] == "ok"
    assert requests.get(f"{url}/docs").status_code == 200
    assert "ray-app" in requests.get(f"{url}/").text
    spec = requests.get(f"{url}/openapi.json").json()
    body = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert "nNeighbors" in body["schema"]["properties"]


def test_post_is_idempotent_and_bad_bodies_name_the_field(local_api):
    url, svc, keys = local_api
    ann = _h(keys["ann"])
    r = requests.post(f"{url}/jobs", json={"jobId": "j1", **TINY}, headers=ann)
    assert r.status_code == 202 and r.headers["Location"] == "/jobs/j1"
    assert r.json() == {"jobId": "j1", "status": "PENDING", "url": "/jobs/j1"}
    rec = svc.status.get("j1")
    assert rec["status"] == "PENDING" and rec["params"]["submittedBy"] == "ann"
    again = requests.post(f"{url}/jobs", json={"jobId": "j1", **TINY}, headers=ann)
    assert again.status_code == 200 and again.json()["jobId"] == "j1"
    other = requests.post(f"{url}/jobs", json={"jobId": "j1", **TINY, "nNeighbors": 9},
                          headers=ann)
    assert other.status_code == 409 and "different body" in other.json()["detail"]
    assert svc.queue.depth()["visible"] == 1  # one message for three POSTs
    generated = requests.post(f"{url}/jobs", json=TINY, headers=ann)
    assert generated.status_code == 202 and generated.json()["jobId"]
    for body, field in (({**TINY, "nNeighbors": "x"}, "nNeighbors"),
                        ({**TINY, "nNeighbours": 8}, "nNeighbours"),
                        ({"nNeighbors": 8}, "streamKey"),
                        ({**TINY, "streamKey": "no-such"}, "no-such"),
                        ({**TINY, "priority": 10}, "priority"),
                        ([1, 2], "JSON object"),
                        ({**TINY, "jobId": "bad id!"}, "jobId")):
        r = requests.post(f"{url}/jobs", json=body, headers=ann)
        assert r.status_code == 422, body
        assert field in r.json()["detail"], r.json()
    for raw in ("{", "", "null"):
        r = requests.post(f"{url}/jobs", data=raw, headers={**ann,
                                                            "Content-Type": "application/json"})
        assert r.status_code == 422, raw
    assert requests.post(f"{url}/jobs", json={**TINY, "submittedBy": "bob"},
                         headers=ann).status_code == 403
    assert requests.post(f"{url}/jobs", json={"jobId": "for-bob", **TINY,
                                               "submittedBy": "bob"},
                         headers=_h(keys["root"])).status_code == 202


def test_identical_concurrent_posts_make_one_job(local_api):
    url, svc, keys = local_api
    barrier = threading.Barrier(8)
    codes = []

    def post():
        barrier.wait()
        codes.append(requests.post(f"{url}/jobs", json={"jobId": "race", **TINY},
                                   headers=_h(keys["ann"])).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 7 + [202], codes
    assert svc.queue.depth()["visible"] == 1
    assert [r["jobId"] for r in svc.status.list()] == ["race"]


def test_users_see_and_cancel_only_their_own_jobs(local_api):
    url, svc, keys = local_api
    ann, bob, root = _h(keys["ann"]), _h(keys["bob"]), _h(keys["root"])
    for i in range(3):
        assert requests.post(f"{url}/jobs", json={"jobId": f"ann-{i}", **TINY},
                             headers=ann).status_code == 202
    assert requests.post(f"{url}/jobs", json={"jobId": "bob-0", **TINY},
                         headers=bob).status_code == 202
    assert requests.get(f"{url}/jobs/ann-0", headers=bob).status_code == 403
    assert requests.delete(f"{url}/jobs/ann-0", headers=bob).status_code == 403
    assert requests.get(f"{url}/jobs/ann-0", headers=root).status_code == 200
    assert requests.get(f"{url}/jobs/nope", headers=ann).status_code == 404
    assert [j["jobId"] for j in requests.get(f"{url}/jobs", headers=bob).json()["jobs"]] \
        == ["bob-0"]
    assert requests.get(f"{url}/jobs?submittedBy=ann", headers=bob).status_code == 403
    everyone = requests.get(f"{url}/jobs", headers=root).json()["jobs"]
    assert len(everyone) == 4
    # pages of two of ann's, by cursor
    seen, cursor = [], None
    while True:
        q = "&cursor=" + cursor if cursor else ""
        page = requests.get(f"{url}/jobs?limit=2{q}", headers=ann).json()
        seen += [j["jobId"] for j in page["jobs"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert sorted(seen) == ["ann-0", "ann-1", "ann-2"]
    for bad in ("limit=0", "limit=x", "status=DONE", "cursor=garbage"):
        r = requests.get(f"{url}/jobs?{bad}", headers=ann)
        assert r.status_code == 422 and r.json()["detail"], bad


def test_cancel_in_each_state(local_api):
    url, svc, keys = local_api
    ann = _h(keys["ann"])
    for job in ("pending", "running", "done"):
        assert requests.post(f"{url}/jobs", json={"jobId": job, **TINY},
                             headers=ann).status_code == 202
    r = requests.delete(f"{url}/jobs/pending", headers=ann)
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert svc.status.claim("running", "driver-x", 60)  # a driver holds it
    r = requests.delete(f"{url}/jobs/running", headers=ann)
    assert r.status_code == 202 and r.json()["status"] == "RUNNING"
    assert r.json()["cancelRequested"] is True
    assert svc.status.claim("done", "driver-x", 60) and svc.status.complete("done", "driver-x",
                                                                             "p")
    r = requests.delete(f"{url}/jobs/done", headers=ann)
    assert r.status_code == 409 and "COMPLETED" in r.json()["detail"]
    r = requests.delete(f"{url}/jobs/pending", headers=ann)
    assert r.status_code == 409 and "CANCELLED" in r.json()["detail"]
    assert requests.delete(f"{url}/jobs/absent", headers=ann).status_code == 404


def test_queued_jobs_per_user_are_limited(keys):
    svc = service_from_env()
    with serving(create_app(svc, keys["store"], Settings(rate=0, burst=1, max_queued=2))
                 ) as url:
        ann = _h(keys["ann"])
        for i in range(2):
            assert requests.post(f"{url}/jobs", json={"jobId": f"q{i}", **TINY},
                                 headers=ann).status_code == 202
        r = requests.post(f"{url}/jobs", json={"jobId": "q2", **TINY}, headers=ann)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert "2 queued" in r.json()["detail"] and svc.status.get("q2") is None
        # a retry of a job already queued is not a new job: still 200
        assert requests.post(f"{url}/jobs", json={"jobId": "q0", **TINY},
                             headers=ann).status_code == 200
        assert requests.post(f"{url}/jobs", json={"jobId": "b0", **TINY},
                             headers=_h(keys["bob"])).status_code == 202
        body = requests.get(f"{url}/queue", headers=_h(keys["root"])).json()
        assert body["pendingPerUser"] == {"ann": 2, "bob": 1} and body["pendingJobs"] == 3
        assert body["queue"]["visible"] == 3 and body["maxQueuedPerUser"] == 2
        mine = requests.get(f"{url}/queue", headers=ann).json()  # not other users' names
        assert mine["pendingPerUser"] == {"ann": 2} and mine["pendingJobs"] == 3


def test_requests_per_key_are_rate_limited(keys):
    with serving(create_app(service_from_env(), keys["store"],
                            Settings(rate=0.5, burst=3, max_queued=0))) as url:
        codes = [requests.get(f"{url}/catalog", headers=_h(keys["ann"])) for _ in range(4)]
        assert [c.status_code for c in codes] == [200, 200, 200, 429]
        assert int(codes[-1].headers["Retry-After"]) >= 1
        assert requests.get(f"{url}/catalog", headers=_h(keys["bob"])).status_code == 200


def test_results_are_served_in_local_mode(local_api):
    url, svc, keys = local_api
    ann = _h(keys["ann"])
    assert requests.post(f"{url}/jobs", json={"jobId": "run", **TINY},
                         headers=ann).status_code == 202
    assert requests.get(f"{url}/jobs/run/results", headers=ann).status_code == 409
    _run_queue(svc)
    job = requests.get(f"{url}/jobs/run", headers=ann).json()
    assert job["status"] == COMPLETED and job["resultsUrl"] == "/jobs/run/results"
    assert job["startedAt"] <= job["finishedAt"] and job["progress"] == 100
    res = requests.get(f"{url}/jobs/run/results", headers=ann).json()
    links = {f["name"]: f["url"] for f in res["files"]}
    assert {"summary.png", "candidates.json", "manifest.json"} <= set(links)
    png = requests.get(url + links["summary.png"], headers=ann)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert requests.get(url + links["summary.png"]).status_code == 401
    assert requests.get(url + links["summary.png"], headers=_h(keys["bob"])).status_code == 403
    for name in ("..%2F..%2Fstatus.db", "nope.txt"):
        assert requests.get(f"{url}/jobs/run/files/{name}", headers=ann).status_code == 404


def test_catalogue_and_health(local_api, monkeypatch):
    url, _svc, keys = local_api
    ann = _h(keys["ann"])
    streams = requests.get(f"{url}/catalog", headers=ann).json()["streams"]
    assert any(s["key"] == "gd-1" for s in streams)
    gd1 = requests.get(f"{url}/catalog/gd-1", headers=ann).json()
    assert len(gd1["track"]["ra"]) == len(gd1["footprint"]["edges"]["upper"]) > 10
    r = requests.get(f"{url}/catalog/no-such-stream", headers=ann)
    assert r.status_code == 404 and "no-such-stream" in r.json()["detail"]


def test_health_says_what_is_down(keys, tmp_path):
    svc = service_from_env()
    (tmp_path / "ro").mkdir()
    with serving(create_app(svc, keys["store"], Settings(0, 1, 0))) as url:
        svc.status.path = tmp_path / "ro" / "missing" / "status.db"  # the store is gone
        svc.status._local.conn = None
        r = requests.get(f"{url}/health")
        assert r.status_code == 503 and r.json()["checks"]["queue"] == "ok"
        assert r.json()["checks"]["status"] != "ok"


def test_aws_mode_over_moto(aws, monkeypatch):
    monkeypatch.setenv("QUEUE_URL", aws["queue_url"])
    monkeypatch.setenv("TABLE_NAME", aws["table"])
    monkeypatch.setenv("BUCKET_NAME", aws["bucket"])
    keys = ApiKeys()
    assert keys.location == f"s3://{aws['bucket']}/config/apikeys.json"
    ann, bob = _h(keys.create("ann")), _h(keys.create("bob"))
    svc = service_from_env()
    with serving(create_app(svc, None, Settings(rate=0, burst=1, max_queued=5))) as url:
        r = requests.post(f"{url}/jobs", json={"jobId": "aws-1", **TINY, "priority": 7},
                          headers=ann)
        assert r.status_code == 202
        assert requests.post(f"{url}/jobs", json={"jobId": "aws-1", **TINY, "priority": 7},
                             headers=ann).status_code == 200
        queue = requests.get(f"{url}/queue", headers=ann).json()
        assert queue["queue"]["high"]["visible"] == 1 and queue["pendingPerUser"] == {"ann": 1}
        assert [j["jobId"] for j in requests.get(f"{url}/jobs", headers=bob).json()["jobs"]] \
            == []
        _run_queue(svc)
        assert requests.get(f"{url}/jobs/aws-1", headers=ann).json()["status"] == COMPLETED
        res = requests.get(f"{url}/jobs/aws-1/results", headers=ann).json()
        link = {f["name"]: f["url"] for f in res["files"]}["candidates.json"]
        assert link.startswith(aws["endpoint"]) and "Signature" in link
        got = requests.get(link)  # a presigned link: no key, no AWS credentials
        assert got.status_code == 200 and got.json() is not None
        assert requests.get(f"{url}/health").json()["mode"] == "aws"


def test_apikey_and_cancel_commands(capsys):
    from ray_app.cli import main

    assert main(["apikey", "create", "zed"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert ApiKeys().lookup(key).name == "zed"
    assert main(["apikey", "create", "bad name"]) == 2
    assert "A-Za-z0-9" in capsys.readouterr().err
    assert main(["apikey", "list"]) == 0
    listing = capsys.readouterr().out
    assert "zed" in listing and key not in listing
    assert main(["apikey", "revoke", "nobody"]) == 2
    assert main(["apikey", "revoke", "zed"]) == 0 and ApiKeys().lookup(key) is None
    svc = service_from_env()
    svc.status.create("c1", {"submittedBy": "zed"})
    capsys.readouterr()
    assert main(["cancel", "c1"]) == 0 and "CANCELLED" in capsys.readouterr().out
    assert main(["cancel", "c1"]) == 2 and "is CANCELLED" in capsys.readouterr().err
    assert main(["cancel", "absent"]) == 2
    assert main(["status", "c1"]) == 0  # a final state: no --watch loop


def test_an_unreachable_aws_endpoint_is_one_line_503(aws, monkeypatch):
    monkeypatch.setenv("QUEUE_URL", aws["queue_url"])
    monkeypatch.setenv("TABLE_NAME", aws["table"])
    monkeypatch.setenv("BUCKET_NAME", aws["bucket"])
    keys = ApiKeys()
    ann = _h(keys.create("ann"))
    keys.lookup(ann["Authorization"][7:])  # the key file is read while S3 answers
    from api_server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with serving(create_app(None, keys, Settings(rate=0, burst=1, max_queued=0))) as url:
        r = requests.get(f"{url}/jobs/x", headers=ann)
        assert r.status_code == 503 and "AWS endpoint unreachable" in r.json()["detail"]
        assert r.headers["Retry-After"]
        h = requests.get(f"{url}/health")
        assert h.status_code == 503 and "unreachable" in h.json()["checks"]["service"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_key_changes_lose_nothing(where, request, tmp_path):
    """Two operators (here 8 writers, each its own ApiKeys as another process would be) create
    keys at once: the file is changed under a lock (local) or by S3 conditional writes."""
    if where == "s3":
        aws = request.getfixturevalue("aws")
        location = f"s3://{aws['bucket']}/config/apikeys.json"
    else:
        location = str(tmp_path / "keys" / "apikeys.json")
    barrier = threading.Barrier(8)
    made = {}

    def create(i):
        store = ApiKeys(location)
        barrier.wait()
        made[f"op{i}"] = store.create(f"op{i}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = ApiKeys(location)
    assert sorted(r["name"] for r in store.list()) == sorted(made)
    assert all(store.lookup(k).name == name for name, k in made.items())
    assert store.revoke("op3") == 1 and store.lookup(made["op3"]) is None


def test_serve_refuses_a_busy_port_in_one_line(capsys):
    import socket

    from ray_app.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err and "--port" in err
    assert main(["serve", "--port", "70000"]) == 2
