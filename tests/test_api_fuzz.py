"""schemathesis against the API's own OpenAPI spec over a real socket: for any input the
spec's operations admit (and many they do not), the API answers without a server error."""

import pytest
import schemathesis
from api_server import serving
from hypothesis import HealthCheck, given, settings

from ray_app.api.app import Settings, create_app
from ray_app.api.keys import ApiKeys
from ray_app.service import service_from_env


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_APP_HOME", str(home))
    keys = ApiKeys(str(home / "apikeys.json"))
    key = keys.create("fuzzer", admin=True)
    with serving(create_app(service_from_env(), keys, Settings(rate=0, burst=1,
                                                                max_queued=3))) as url:
        yield url, key
    mp.undo()


def _operations(url):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    return {f"{op.method.upper()} {op.path}": op for op in ops}


def test_the_spec_lists_every_route(api):
    assert set(_operations(api[0])) == {
        "GET /jobs", "POST /jobs", "GET /jobs/{job_id}", "DELETE /jobs/{job_id}",
        "GET /jobs/{job_id}/results", "GET /jobs/{job_id}/files/{name}", "GET /catalog",
        "GET /catalog/{key}", "GET /queue", "GET /health"}


POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# Negative cases exist only where the spec constrains something (a body, typed queries);
# a free-form path string has no invalid value to generate.
CASES = [("POST /jobs", POSITIVE), ("POST /jobs", NEGATIVE), ("GET /jobs", POSITIVE),
         ("GET /jobs", NEGATIVE), ("GET /jobs/{job_id}", POSITIVE),
         ("DELETE /jobs/{job_id}", POSITIVE), ("GET /jobs/{job_id}/results", POSITIVE),
         ("GET /jobs/{job_id}/files/{name}", POSITIVE), ("GET /catalog/{key}", POSITIVE),
         ("GET /queue", POSITIVE)]


@pytest.mark.parametrize("operation,mode", CASES, ids=[f"{o}-{m.value}" for o, m in CASES])
def test_no_input_makes_a_server_error(api, operation, mode):
    url, key = api
    op = _operations(url)[operation]

    @given(op.as_strategy(mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    def check(case):
        for headers in ({"Authorization": f"Bearer {key}"}, {}):
            response = case.call(base_url=url, headers=headers)
            assert response.status_code < 500, (case.method, case.path, case.body,
                                                case.query, response.text[:300])
            if response.status_code >= 400:  # every refusal says why
                assert response.json()["detail"], response.text

    check()
