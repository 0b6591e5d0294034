"""Run one recovery job end to end: load -> clean -> features -> shards -> merge -> candidates
-> outputs. The engine that runs the shard stages is passed in (``run_recovery(params,
engine)``), so the same runner serves the local CLI, ``ray job submit`` and the tests.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import __version__
from .config import RecoverParams
from .core.features import FEATURE_NAMES, finite_rows, stream_features
from .core.knn import validate_k
from .core.persistence import merge_forests
from .core.recovery import (
    calibrate_null,
    candidate_labels,
    candidates,
    null_shuffle_cell,
    summarize_members,
)
from .core.significance import expected_false_candidates
from .data.catalogue import (
    CatalogueError,
    columns_from_table,
    is_uri,
    read_catalogue,
    validate_columns,
)
from .data.synthetic import Injection, synthetic_sky
from .io import outputs
from .io.plots import summary_plot

ProgressFn = Callable[[int, str], None]

STAGES = {"load": 5, "clean": 10, "features": 15, "density": 60, "merge": 70,
          "candidates": 85, "write": 100}


@dataclass
class RunSummary:
    out_dir: Path
    n_stars: int
    n_candidates: int
    candidates: list[dict]
    metadata: dict


def _versions() -> dict:
    import astropy
    import numba
    import pyarrow
    import scipy

    out = {"ray_app": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__, "numba": numba.__version__,
           "astropy": astropy.__version__, "pyarrow": pyarrow.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:  # the core runs without ray installed
        pass
    return out


def load_catalogue(params: RecoverParams, progress: ProgressFn | None = None
                   ) -> tuple[dict, pa.Table, dict]:
    """Columns, raw table and provenance of the job's input: a Parquet catalogue, the Gaia
    archive (through the chunk cache) or the seeded synthetic sky."""
    target = params.stream
    if params.gaia:
        from .data.gaia import GaiaArchive, fetch_region
        from .io.cache import open_cache

        def chunk_progress(done: int, total: int) -> None:
            if progress is not None:
                progress(STAGES["load"] * done // max(total, 1), "load")

        cuts = target.default_cuts
        table, report, chunks = fetch_region(target.footprint, cuts,
                                             GaiaArchive(params.gaia_url),
                                             open_cache(params.cache), progress=chunk_progress)
        cols = columns_from_table(table, origin="Gaia DR3")
        prov = {"kind": "gaia-dr3", "archive": params.gaia_url, "cache": params.cache,
                "cuts": cuts.to_dict(), "region": target.footprint.to_dict(),
                "chunk_cache_keys": [c.cache_key for c in chunks], **report.to_dict()}
        return cols, table, prov
    if params.input_path is not None:
        cols, table = read_catalogue(params.input_path, params.columns)
        if is_uri(params.input_path):
            prov = {"kind": "parquet", "uri": params.input_path, "rows": table.num_rows}
        else:
            prov = {"kind": "parquet", "path": str(Path(params.input_path).resolve()),
                    "sha256": outputs.sha256_file(Path(params.input_path)),
                    "rows": table.num_rows}
        if params.columns:
            prov["columns_renamed"] = params.columns
        if params.region is not None:  # a blind region keeps the catalogue's stars inside it
            inside = target.region.contains(cols["ra"], cols["dec"])
            if not inside.any():
                raise CatalogueError(f"input catalogue {params.input_path!r}: none of its "
                                     f"{table.num_rows} rows lies inside the region")
            cols = {k: v[inside] for k, v in cols.items()}
            table = table.filter(pa.array(inside))
            prov["rows_in_region"] = int(inside.sum())
        return cols, table, prov
    injections = []
    if params.region is None and params.n_stream > 0:
        injections = [Injection(target, params.n_stream)]
    cols = synthetic_sky(target.footprint, params.n_background, injections, seed=params.seed,
                         cuts=target.default_cuts)
    cols = validate_columns(cols, "synthetic sky")
    table = pa.table(cols)
    prov = {"kind": "synthetic", "generator": "ray_app.data.synthetic.synthetic_sky",
            "target": target.key, "n_background": params.n_background,
            "injected": [{"stream": target.key, "n_members": params.n_stream}]
            if injections else [], "n_stream_kept": int(cols["is_stream"].sum()),
            "seed": params.seed, "rows": table.num_rows}
    return cols, table, prov


def _noop(pct: int, stage: str) -> None:
    pass


def run_recovery(params: RecoverParams, engine, progress: ProgressFn = _noop) -> RunSummary:
    """Run one job and write its outputs to ``params.out_dir``.

    Raises
    ------
    ValueError (CatalogueError included)
        Bad input; nothing is written.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[stage] = now - t
        t = now
        progress(STAGES[stage], stage)

    cols, table, provenance = load_catalogue(params, progress)
    done("load")

    n_input = len(cols["source_id"])
    keep = finite_rows({"phi1": cols["ra"], "phi2": cols["dec"], "pm_phi1_cosphi2": cols["pmra"],
                        "pm_phi2": cols["pmdec"], "parallax": cols["parallax"]})
    n_clean = int(keep.sum())
    if n_clean == 0:
        raise CatalogueError("no star has finite ra, dec, pmra, pmdec and parallax "
                             f"({n_input} rows, all with a NaN in a feature)")
    try:
        validate_k(params.n_neighbors, n_clean)
    except ValueError as exc:
        raise CatalogueError(f"{exc} ({n_input - n_clean} of {n_input} rows dropped for NaN "
                             "features)") from exc
    clean = {name: np.asarray(v)[keep] for name, v in cols.items()}
    sid = clean["source_id"].astype(np.int64)
    done("clean")

    raw, X = stream_features(params.stream.frame, clean["ra"], clean["dec"], clean["pmra"],
                             clean["pmdec"], clean["parallax"], params.scales)
    phi1, phi2, pm1, pm2 = (raw[n] for n in FEATURE_NAMES[:4])
    done("features")

    def shard_progress(done_shards: int, total: int) -> None:
        lo, hi = STAGES["features"], STAGES["density"]
        progress(lo + (hi - lo) * done_shards // max(total, 1), "density")

    sharded = engine.density_and_forests(X, sid, params.n_neighbors, shards=params.shards,
                                         progress=shard_progress)
    f = sharded.log_density
    done("density")

    pers = merge_forests(f, sid, sharded.forests)
    done("merge")

    t_null = time.perf_counter()
    null = calibrate_null(X, sid, params.n_neighbors, seed=params.seed,
                          shuffle_cell=null_shuffle_cell(params.scales))
    timings["calibration"] = time.perf_counter() - t_null
    cres = candidates(pers, f, params.sigma_threshold, null)
    labels = candidate_labels(len(sid), cres.candidates)
    done("candidates")

    cand_json = []
    for c in cres.candidates:
        summ = summarize_members(raw, c.members)
        cand_json.append({
            "index": c.index, "significance": c.significance, "birth": c.birth,
            "death": c.death, "persistence": c.persistence,
            "peak_source_id": int(sid[c.peak]), "saddle_source_id": int(sid[c.saddle]),
            "essential": c.essential, "n_members": int(len(c.members)),
            "centroid": {k: v["centroid"] for k, v in summ.items()},
            "spread": {k: v["spread"] for k, v in summ.items()},
        })

    finite = f[pers.peak] - f[pers.saddle]
    metadata = {
        "job": {"stream_key": params.stream.key, "stream": params.stream.to_dict(),
                **({"region": params.region} if params.region is not None else {})},
        "parameters": {"nNeighbors": params.n_neighbors,
                       "sigmaThreshold": params.sigma_threshold, "seed": params.seed,
                       "feature_scales": params.scales.to_dict(),
                       "features": list(FEATURE_NAMES)},
        "counts": {"input_rows": n_input, "dropped_nan": n_input - n_clean, "stars": n_clean,
                   "finite_pairs": int(len(pers.peak)),
                   "essential_classes": int(len(pers.essential)),
                   "forest_edges": int(len(pers.forest_src)),
                   "candidates": len(cres.candidates),
                   "knn_rows_requeried": int(sharded.requeried)},
        "significance": {
            "definition": "per-job look-elsewhere-corrected Gaussian-equivalent significance; "
                          "see ray_app/core/significance.py",
            "nominal_false_candidates_per_job": expected_false_candidates(
                params.sigma_threshold),
            "n_tests": cres.n_tests, **null.to_dict()},
        "membership": "death-level core of each pair (essential classes: key saddle)",
        "engine": {"name": engine.name, "backend": sharded.backend,
                   "shards": sharded.shards, "shard_seconds": sharded.shard_seconds,
                   "shard_axis": FEATURE_NAMES[sharded.axis], "halo": sharded.halo,
                   "halo_fixup_stars": sharded.halo_fixups,
                   "forest_retries": sharded.forest_retries,
                   "shard_nodes": sharded.placement, "shard_actors": sharded.actors,
                   "shard_memory_plan": sharded.memory_plan},
        "data": provenance,
        "software": _versions(),
        "timings_s": timings,
    }

    with outputs.atomic_output_dir(params.out_dir) as tmp:
        ess_sid = np.where(cres.essential_saddle >= 0,
                           sid[np.maximum(cres.essential_saddle, 0)], -1)
        outputs.write_persistence(tmp / "persistence.npz", {
            "diagram_0": np.column_stack([f[pers.peak], f[pers.saddle]]).reshape(-1, 2),
            "peak_source_id": sid[pers.peak], "saddle_source_id": sid[pers.saddle],
            "significance": cres.pair_sigma,
            "essential_0": np.column_stack([f[pers.essential],
                                            np.full(len(pers.essential), -np.inf)]),
            "essential_peak_source_id": sid[pers.essential],
            "essential_key_saddle_source_id": ess_sid,
            "essential_significance": cres.essential_sigma,
        })
        outputs.write_json(tmp / "candidates.json", cand_json)
        outputs.write_members(tmp / "candidate_members.npz",
                              {f"candidate_{c.index}": sid[c.members] for c in
                               cres.candidates})
        stars = {name: v for name, v in clean.items()}
        stars.update({"phi1": phi1, "phi2": phi2, "pm_phi1_cosphi2": pm1, "pm_phi2": pm2})
        stars.update({f"feat_{n}": X[:, i] for i, n in enumerate(FEATURE_NAMES)})
        stars.update({"log_density": f, "candidate": labels})
        outputs.write_stars(tmp / "stars.parquet", stars)
        if params.write_ecsv:
            outputs.write_gaia_ecsv(tmp / "gaia_table.ecsv", table)
        summary_plot(tmp / "summary.png", births=f[pers.peak], deaths=f[pers.saddle],
                     pair_sigma=cres.pair_sigma, sigma_threshold=params.sigma_threshold,
                     essential_births=f[pers.essential], phi1=phi1, phi2=phi2, pm1=pm1,
                     pm2=pm2, candidate=labels,
                     title=f"{params.stream.name}: {len(cres.candidates)} candidate(s), "
                           f"{n_clean} stars, k={params.n_neighbors}")
        done("write")
        metadata["timings_s"] = timings
        metadata["persistence_summary"] = {
            "max_finite_persistence": float(finite.max()) if len(finite) else None}
        outputs.write_json(tmp / "metadata.json", metadata)
    return RunSummary(Path(params.out_dir), n_clean, len(cres.candidates), cand_json, metadata)
