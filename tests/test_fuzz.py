"""Property-based fuzzing: whatever arrives, the job message parser and ``--region`` answer
with their documented validation error (``InvalidJob`` / ``ValueError`` naming the field) or
a valid job; never another exception, never a crash.
"""

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ray_app.cli import EXIT_BAD_INPUT, main
from ray_app.data.regions import parse_region
from ray_app.io.ids import InvalidJob
from ray_app.service.jobspec import FIELDS, parse_job

FUZZ = settings(max_examples=300, deadline=None, database=None,  # nothing written to the checkout
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children,
                                                    max_size=5)), max_leaves=20)
# mostly plausible numbers (to reach the deep checks), sometimes anything
plausible = st.one_of(st.integers(-400, 400), st.floats(-400, 400))
numbers = st.one_of(plausible, plausible, plausible, st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=5), st.none())
points = st.one_of(st.tuples(plausible, st.floats(-95, 95)).map(list),
                   st.tuples(plausible, st.floats(-95, 95)).map(list),
                   st.lists(numbers, min_size=0, max_size=4), numbers)
sky = st.tuples(st.floats(-10, 370), st.floats(-91, 91)).map(list)
regions = st.one_of(
    st.fixed_dictionaries({"cone": st.fixed_dictionaries({"center": sky,
                                                          "radius": st.floats(-1, 50)})}),
    st.fixed_dictionaries({"polygon": st.lists(sky, min_size=2, max_size=8)}),
    st.fixed_dictionaries({"healpix": st.fixed_dictionaries(
        {"level": st.integers(-1, 14), "pixels": st.lists(st.integers(-5, 3000), max_size=6)})}),
    st.fixed_dictionaries({"cone": st.one_of(
        st.fixed_dictionaries({"center": points, "radius": numbers}), json_values)}),
    st.fixed_dictionaries({"polygon": st.one_of(st.lists(points, max_size=12), json_values)}),
    st.fixed_dictionaries({"healpix": st.one_of(
        st.fixed_dictionaries({"level": numbers,
                               "pixels": st.one_of(st.lists(numbers, max_size=6), numbers)}),
        json_values)}),
    st.dictionaries(st.sampled_from(["cone", "polygon", "healpix", "frame", "x"]), json_values,
                    max_size=3),
    json_values)
with_frame = st.one_of(regions, regions.flatmap(lambda r: st.just(r) if not isinstance(r, dict)
                                                 else st.fixed_dictionaries(
                                                     {"frame": st.one_of(st.fixed_dictionaries(
                                                         {"pole": points}), json_values)}
                                                 ).map(lambda f, r=r: {**r, **f})))
field_values = {
    "jobId": st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,130}", fullmatch=True), json_values),
    "streamKey": st.one_of(st.sampled_from(["gd-1", "pal-5", "GD-1", "nope", ""]), json_values),
    "region": with_frame,
    "nNeighbors": numbers, "sigmaThreshold": numbers, "shards": numbers, "priority": numbers,
    "seed": numbers, "nBackground": numbers, "nStream": numbers, "memberProbability": numbers,
    "source": st.one_of(st.sampled_from(["synthetic", "gaia-dr3", "s3://b/k.parquet",
                                         "/tmp/x.parquet", ""]), json_values),
    "columns": json_values, "cache": json_values, "submittedBy": json_values,
    "orientations": numbers, "surveyId": st.one_of(st.text(max_size=140), json_values),
    "photometry": st.one_of(st.just("none"), st.fixed_dictionaries(
        {"magnitude": json_values, "colour": json_values}), json_values),
}
valid_base = st.one_of(
    st.fixed_dictionaries({"jobId": st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
                           "streamKey": st.sampled_from(["gd-1", "pal-5", "orphan"])}),
    st.fixed_dictionaries({"jobId": st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
                           "region": st.fixed_dictionaries({"cone": st.fixed_dictionaries(
                               {"center": st.tuples(st.floats(0, 360), st.floats(-90, 90)
                                                    ).map(list),
                                "radius": st.floats(0.1, 30)})})}))
# a valid message with a few fields replaced or added, or anything at all
messages = st.one_of(
    st.tuples(valid_base, st.fixed_dictionaries({}, optional=field_values)).map(
        lambda t: {**t[0], **t[1]}),
    st.tuples(valid_base, st.fixed_dictionaries({}, optional=field_values)).map(
        lambda t: {**t[0], **t[1]}),
    st.fixed_dictionaries({}, optional={**field_values, "nNeighbours": json_values,
                                        "extra": json_values}))


def _assert_parses_or_says_why(text):
    try:
        spec = parse_job(text)
    except InvalidJob as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # accepted: it round-trips through its own message
    assert parse_job(json.dumps(spec.to_message())) == spec


@FUZZ
@given(messages)
@example({"jobId": "a", "streamKey": "gd-1", "nNeighbors": 2**70})
@example({"jobId": "a", "region": {"cone": {"center": [1e308, -1e308], "radius": 1e-320}}})
@example({"jobId": "a", "region": {"polygon": [[0, 0], [0, 0], [0, 0]]}})
@example({"jobId": "a", "region": {"healpix": {"level": 29, "pixels": [-1]}}})
def test_job_messages_parse_or_are_refused_with_the_field(msg):
    _assert_parses_or_says_why(json.dumps(msg))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")), json_values.map(json.dumps)))
def test_arbitrary_text_is_refused_as_an_invalid_message(text):
    _assert_parses_or_says_why(text)


@FUZZ
@given(with_frame)
@example({"cone": {"center": [float("nan"), 0], "radius": 1}})
@example({"cone": {"center": [0, 90], "radius": 45}, "frame": {"pole": [0, 90]}})
@example({"polygon": [[0, 0], [180, 0], [0, 0.0000001]]})
def test_regions_build_or_raise_value_error(spec):
    try:
        region = parse_region(spec)
    except ValueError as exc:
        assert str(exc).startswith("region") and "\n" not in str(exc)
        return
    assert region.area_deg2 > 0 and math.isfinite(region.area_deg2)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=80), with_frame.map(json.dumps)))
def test_cli_region_flag_is_refused_in_one_line_or_accepted(capsys, tmp_path_factory, text):
    """``ray-app submit --region`` (local mode): exit 0 (queued) or 2 with one line."""
    if text.startswith("@") or text.startswith("-"):
        text = " " + text  # a file reference / an option is another test's business
    rc = main(["submit", "--region", text])
    err = capsys.readouterr().err.strip()
    if rc == 0:
        return
    assert rc == EXIT_BAD_INPUT, err
    assert len(err.splitlines()) == 1 and err.startswith("ray-app: error:"), err


def test_the_fuzzers_know_every_field():
    assert set(field_values) == set(FIELDS)


@pytest.mark.parametrize("bad", [{"jobId": "a", "streamKey": "gd-1", "nNeighbors": 2**70}])
def test_examples_are_refused_with_the_field(bad):
    with pytest.raises(InvalidJob, match="nNeighbors"):
        parse_job(json.dumps(bad))
