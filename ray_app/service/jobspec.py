"""The job message: JSON in camelCase, as the API that feeds the queue sends it.

``{"jobId": "gd1-0001", "streamKey": "gd-1", "nNeighbors": 32, "sigmaThreshold": 5}``

Validation is strict: every error names the field, the value received and what is allowed;
unknown fields are refused (a typo such as ``nNeighbours`` must not silently fall back to a
default). ``jobId`` becomes an S3 key prefix, so it is restricted to 1-128 characters of
``[A-Za-z0-9_-]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..core.knn import MAX_K, validate_k
from ..core.membership import DEFAULT_MEMBER_PROBABILITY, validate_member_probability
from ..core.significance import DEFAULT_SIGMA_THRESHOLD, validate_sigma
from ..data.catalogue import parse_columns_map, parse_photometry
from ..data.regions import parse_region
from ..data.registry import get_stream
from ..io.ids import JOB_ID_PATTERN, InvalidJob, validate_job_id
from ..pipeline.params import (
    DEFAULT_N_NEIGHBORS,
    MAX_ORIENTATIONS,
    MAX_SHARDS,
    validate_orientations,
)

MAX_MESSAGE_BYTES = 256 * 1024

FIELDS = {
    "jobId": "required: 1-128 characters of [A-Za-z0-9_-]",
    "streamKey": "a registry key (ray-app catalog); exactly one of streamKey and region",
    "region": "a blind region: {\"cone\": {\"center\": [ra, dec], \"radius\": deg}} | "
              "{\"polygon\": [[ra, dec], ...]} | {\"healpix\": {\"level\": L, \"pixels\": "
              "[...]}}, optional \"frame\": {\"pole\": [ra, dec]}",
    "nNeighbors": f"optional integer in [1, 1024], default {DEFAULT_N_NEIGHBORS}",
    "sigmaThreshold": f"optional number > 0, default {DEFAULT_SIGMA_THRESHOLD:g}",
    "source": "optional: 'synthetic' (default), 'gaia-dr3' (the Gaia archive, cached) or a "
              "Parquet path / s3:// URI",
    "columns": "optional object: the source's column names -> ours, e.g. {\"RA_ICRS\": \"ra\"}",
    "cache": "optional: where Gaia chunks are cached, s3://bucket/prefix (gaia-dr3 sources; "
             "default: cache/gaia beside the service's results)",
    "shards": f"optional integer in [1, {MAX_SHARDS}]",
    "priority": "optional integer in [0, 9]",
    "submittedBy": "optional string, at most 256 characters",
    "seed": "optional integer >= 0 (synthetic catalogue and null calibration)",
    "nBackground": "optional integer >= 0 (synthetic catalogue size)",
    "nStream": "optional integer >= 0 (synthetic stream size)",
    "memberProbability": "optional number in (0, 1], default 0.5: members are the stars at "
                         "least this likely to belong to the candidate's stream",
    "orientations": f"optional integer in [1, {MAX_ORIENTATIONS}]: frames of a blind region's "
                    "orientation scan (regions without a frame; default 8)",
    "surveyId": "optional string, at most 128 characters: the survey campaign a patch job "
                "belongs to",
    "photometry": "optional {\"magnitude\": column, \"colour\": column or \"A-B\"} or "
                  "\"none\"; default phot_g_mean_mag and bp_rp when the table has them",
}


#: Plain integer fields: (lowest, highest or None, default); the parser and the schema use it.
INT_FIELDS = {"shards": (1, MAX_SHARDS, None), "priority": (0, 9, 0), "seed": (0, None, 42),
              "nBackground": (0, 10**8, 30000), "nStream": (0, 10**7, 500)}

_INT, _NUM, _STR, _OBJ = {"type": "integer"}, {"type": "number"}, {"type": "string"}, \
    {"type": "object"}
#: JSON Schema of each field (types and bounds; :func:`parse_job` stays the validator and
#: also checks what a schema cannot, e.g. a known streamKey or a valid region).
_TYPES = {
    "jobId": {**_STR, "pattern": JOB_ID_PATTERN.pattern, "minLength": 1, "maxLength": 128},
    "streamKey": _STR, "region": _OBJ,
    "nNeighbors": {**_INT, "minimum": 1, "maximum": MAX_K},
    "sigmaThreshold": {**_NUM, "exclusiveMinimum": 0},
    "source": {**_STR, "minLength": 1, "maxLength": 1024},
    "columns": {**_OBJ, "additionalProperties": _STR},
    "cache": {**_STR, "pattern": "^s3://"},
    "submittedBy": {**_STR, "maxLength": 256},
    **{name: {**_INT, "minimum": lo, **({} if hi is None else {"maximum": hi})}
       for name, (lo, hi, _default) in INT_FIELDS.items()},
    "memberProbability": {**_NUM, "exclusiveMinimum": 0, "maximum": 1},
    "orientations": {**_INT, "minimum": 1, "maximum": MAX_ORIENTATIONS},
    "surveyId": {**_STR, "minLength": 1, "maxLength": 128},
    "photometry": {"anyOf": [_OBJ, {**_STR, "enum": ["none"]}]},
}


def json_schema(job_id_required: bool = True) -> dict:
    """The job message as a JSON Schema (the API's OpenAPI request body), built from
    :data:`FIELDS` (descriptions) and the types above: one definition of each field."""
    return {"type": "object", "additionalProperties": False,
            "required": ["jobId"] if job_id_required else [],
            "properties": {name: {**_TYPES[name], "description": FIELDS[name]}
                           for name in FIELDS}}


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    stream_key: str | None
    n_neighbors: int = DEFAULT_N_NEIGHBORS
    sigma_threshold: float = DEFAULT_SIGMA_THRESHOLD
    source: str = "synthetic"
    shards: int | None = None
    priority: int = INT_FIELDS["priority"][2]
    submitted_by: str | None = None
    columns: dict | None = None
    seed: int = INT_FIELDS["seed"][2]
    n_background: int = INT_FIELDS["nBackground"][2]
    n_stream: int = INT_FIELDS["nStream"][2]
    region: dict | None = None
    member_probability: float = DEFAULT_MEMBER_PROBABILITY
    photometry: dict | None = None
    cache: str | None = None
    orientations: int | None = None
    survey_id: str | None = None
    extra: dict = field(default_factory=dict)

    def to_message(self) -> dict:
        msg = {"jobId": self.job_id, "nNeighbors": self.n_neighbors,
               "sigmaThreshold": self.sigma_threshold,
               "source": self.source, "priority": self.priority, "seed": self.seed,
               "nBackground": self.n_background, "nStream": self.n_stream}
        for name, value in (("streamKey", self.stream_key), ("region", self.region),
                            ("shards", self.shards), ("submittedBy", self.submitted_by),
                            ("cache", self.cache), ("orientations", self.orientations),
                            ("surveyId", self.survey_id)):
            if value is not None:  # optional fields appear only when set
                msg[name] = value
        if self.columns:
            msg["columns"] = self.columns
        if self.member_probability != DEFAULT_MEMBER_PROBABILITY:
            msg["memberProbability"] = self.member_probability
        if self.photometry is not None:
            msg["photometry"] = "none" if self.photometry.get("off") else self.photometry
        return msg


def _int_field(msg: dict, name: str):
    lo, hi, default = INT_FIELDS[name]
    if name not in msg:
        return default
    v = msg[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {allowed}, got {v!r}")
    return v


def parse_job(body: str | bytes | dict) -> JobSpec:
    """Parse and validate one message body.

    Raises
    ------
    InvalidJob
        With the field, value and what is allowed; ``job_id`` set when it was readable.
    """
    if isinstance(body, bytes | str):
        if len(body) > MAX_MESSAGE_BYTES:
            raise InvalidJob(f"message is {len(body)} bytes; at most {MAX_MESSAGE_BYTES}")
        try:
            msg = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidJob(f"message is not valid JSON: {exc}") from None
    else:
        msg = body
    if not isinstance(msg, dict):
        raise InvalidJob(f"message must be a JSON object, got {type(msg).__name__}")
    job_id = msg.get("jobId")
    readable = job_id if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id) else None
    try:
        if "jobId" not in msg:
            raise InvalidJob("jobId is required (1-128 characters of [A-Za-z0-9_-])")
        validate_job_id(job_id)
        unknown = sorted(set(msg) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(FIELDS)}")
        if ("streamKey" in msg) == ("region" in msg):
            raise ValueError("give exactly one of streamKey (a registry stream, see `ray-app "
                             "catalog`) and region (a blind search)")
        region = msg.get("region")
        if "region" in msg:
            if not isinstance(region, dict):
                raise ValueError(f"region must be an object ({FIELDS['region']}), got "
                                 f"{region!r}")
            parse_region(region)  # validated here: a bad region never reaches a driver
            key = None
        else:
            key = get_stream(msg["streamKey"]).key
        k = validate_k(msg.get("nNeighbors", DEFAULT_N_NEIGHBORS))
        sigma = validate_sigma(msg.get("sigmaThreshold", DEFAULT_SIGMA_THRESHOLD))
        source = msg.get("source", "synthetic")
        if not isinstance(source, str) or not source or len(source) > 1024:
            raise ValueError(f"source must be 'synthetic' or a path/URI string, got {source!r}")
        cache = msg.get("cache")
        if cache is not None and (not isinstance(cache, str) or not cache.startswith("s3://")
                                  or len(cache) > 1024):
            raise ValueError(f"cache must be an s3://bucket/prefix URI (the cluster's drivers "
                             f"share it), got {cache!r}")
        submitted_by = msg.get("submittedBy")
        if submitted_by is not None and (not isinstance(submitted_by, str)
                                         or len(submitted_by) > 256):
            raise ValueError(f"submittedBy must be a string of at most 256 characters, "
                             f"got {submitted_by!r}")
        survey_id = msg.get("surveyId")
        if survey_id is not None and (not isinstance(survey_id, str) or not 1 <= len(
                survey_id) <= 128):
            raise ValueError(f"surveyId must be a string of 1-128 characters, got "
                             f"{survey_id!r}")
        orientations = validate_orientations(msg.get("orientations"))
        if orientations is not None and (region is None or "frame" in region):
            raise ValueError("orientations applies to a region without a frame (a blind "
                             f"scan), got orientations={orientations!r} with "
                             + ("streamKey" if region is None else "region.frame"))
        return JobSpec(
            orientations=orientations, survey_id=survey_id,
            job_id=job_id, stream_key=key, region=region, n_neighbors=k, sigma_threshold=sigma,
            source=source, shards=_int_field(msg, "shards"),
            priority=_int_field(msg, "priority"), submitted_by=submitted_by,
            columns=parse_columns_map(msg.get("columns")),
            seed=_int_field(msg, "seed"),
            n_background=_int_field(msg, "nBackground"),
            n_stream=_int_field(msg, "nStream"),
            member_probability=validate_member_probability(
                msg.get("memberProbability", DEFAULT_MEMBER_PROBABILITY)),
            photometry=parse_photometry(msg.get("photometry")), cache=cache)
    except InvalidJob as exc:
        exc.job_id = readable
        raise
    except ValueError as exc:
        raise InvalidJob(str(exc), readable) from None

