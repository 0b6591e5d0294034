"""Job messages: strict validation with the field, the value and what is allowed."""

import json

import pytest

from ray_app.io.ids import InvalidJob, validate_job_id
from ray_app.service.jobspec import parse_job


def test_minimal_message_gets_defaults():
    spec = parse_job(json.dumps({"jobId": "gd1-0001", "streamKey": "GD-1"}))
    assert spec.stream_key == "gd-1" and spec.n_neighbors == 32 and spec.sigma_threshold == 5.0
    assert parse_job({"jobId": "a", "streamKey": "gd-1", "sigmaThreshold": 3}).sigma_threshold \
        == 3.0


@pytest.mark.parametrize("body,needle,job_id", [
    ("{not json", "not valid JSON", None),
    ("[1, 2]", "JSON object", None),
    ({"streamKey": "gd-1"}, "jobId is required", None),
    ({"jobId": "../x", "streamKey": "gd-1"}, "jobId must be", None),
    ({"jobId": "a/b", "streamKey": "gd-1"}, "jobId must be", None),
    ({"jobId": "x" * 300, "streamKey": "gd-1"}, "length 300", None),
    ({"jobId": "", "streamKey": "gd-1"}, "jobId must be", None),
    ({"jobId": "j1"}, "exactly one of streamKey", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "region": {"cone": {"center": [0, 0], "radius": 1}}},
     "exactly one of streamKey", "j1"),
    ({"jobId": "j1", "region": {"cone": {"center": [0, 0], "radius": 45}}},
     "region.cone.radius must be a number in [0, 30], got 45", "j1"),
    ({"jobId": "j1", "region": {"healpix": {"level": 1, "pixels": list(range(20))}}},
     "at most 3000 deg", "j1"),
    ({"jobId": "j1", "region": {"polygon": [[0, 0], [1, 1]]}}, "3-1000", "j1"),
    ({"jobId": "j1", "region": {"polygon": [[0, 0], [1, 1], [0, 0]]}}, "zero area", "j1"),
    ({"jobId": "j1", "region": {"box": [1, 2]}}, "exactly one of cone, polygon", "j1"),
    ({"jobId": "j1", "region": {"cone": {"center": [0, 95], "radius": 1}}},
     "region.cone.center", "j1"),
    ({"jobId": "j1", "region": {"cone": {"center": [0, 0], "radius": 1},
                                "frame": {"pole": [0, 0]}}}, "region.frame", "j1"),
    ({"jobId": "j1", "streamKey": "gd-2"}, "gd-1?", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "nNeighbors": 0}, "nNeighbors", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "nNeighbors": 2000}, "nNeighbors", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "nNeighbors": 8.5}, "nNeighbors", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "sigmaThreshold": -1}, "sigmaThreshold", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "sigmaThreshold": "high"}, "sigmaThreshold", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "nNeighbours": 8}, "unknown field(s) nNeighbours",
     "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "shards": 0}, "shards must be an integer", "j1"),
    ({"jobId": "j1", "streamKey": "gd-1", "priority": 12}, "priority", "j1"),
])
def test_invalid_messages(body, needle, job_id):
    with pytest.raises(InvalidJob, match=None) as info:
        parse_job(body if isinstance(body, str) else json.dumps(body))
    assert needle in str(info.value)
    assert info.value.job_id == job_id


def test_job_id_rules():
    assert validate_job_id("A-b_9") == "A-b_9"
    for bad in ("../x", "a/b", "x" * 129, "", None, "a b", "é"):
        with pytest.raises(InvalidJob):
            validate_job_id(bad)


def test_cache_member_probability_and_photometry_fields():
    spec = parse_job({"jobId": "c-1", "streamKey": "gd-1", "source": "gaia-dr3",
                      "cache": "s3://b/cache", "memberProbability": 0.8,
                      "photometry": {"magnitude": "g", "colour": "g-i"}})
    assert spec.cache == "s3://b/cache" and spec.member_probability == 0.8
    assert parse_job(spec.to_message()) == spec  # the message round-trips
    for bad, needle in (({"cache": "/local/dir"}, "cache must be an s3://"),
                        ({"memberProbability": 0}, "memberProbability"),
                        ({"photometry": {"magnitude": "g"}}, "photometry")):
        with pytest.raises(InvalidJob, match=needle):
            parse_job({"jobId": "c-2", "streamKey": "gd-1", **bad})


def test_a_null_region_is_refused_not_a_crash():
    # found by schemathesis through the API: {"region": null} raised KeyError('streamKey')
    for region in (None, [], "cone"):
        with pytest.raises(InvalidJob, match="region must be an object"):
            parse_job({"jobId": "j", "region": region})


def test_the_api_schema_and_the_parser_agree_on_every_bound():
    """The OpenAPI body schema is built from the parser's own tables: each integer field's
    bounds are exactly where parse_job starts refusing."""
    from ray_app.service.jobspec import FIELDS, json_schema

    props = json_schema()["properties"]
    assert set(props) == set(FIELDS)
    stream = {"jobId": "j", "streamKey": "gd-1"}
    blind = {"jobId": "j", "region": {"cone": {"center": [150, 30], "radius": 5}}}
    for name, spec in props.items():
        if spec.get("type") != "integer":
            continue
        base = blind if name == "orientations" else stream  # a scan needs a blind region
        lo = spec["minimum"]
        assert parse_job({**base, name: lo}), name
        with pytest.raises(InvalidJob, match=name):
            parse_job({**base, name: lo - 1})
        if "maximum" in spec:
            assert parse_job({**base, name: spec["maximum"]}), name
            with pytest.raises(InvalidJob, match=name):
                parse_job({**base, name: spec["maximum"] + 1})
