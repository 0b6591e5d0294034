"""Run one recovery job end to end: load -> clean -> features -> shards -> merge -> candidates
-> outputs. The engine that runs the shard stages is passed in (``run_recovery(params,
engine)``), so the same runner serves the local CLI, ``ray job submit`` and the tests.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import __version__
from ..core.cuts import motion_cuts
from ..core.features import (
    FEATURE_NAMES,
    FeatureScales,
    feature_matrix,
    finite_rows,
    stream_features,
)
from ..core.knn import validate_k
from ..core.membership import member_extent, membership_probabilities
from ..core.persistence import merge_forests
from ..core.recovery import (
    calibrate_null,
    candidate_labels,
    candidates,
    membership_seed,
    merge_searches,
    null_shuffle_cell,
    summarize_members,
)
from ..core.significance import expected_false_candidates
from ..core.tracks import relative_features, track_polyline
from ..data.catalogue import (
    CatalogueError,
    columns_from_table,
    is_uri,
    photometry_columns,
    read_catalogue,
    validate_columns,
)
from ..data.synthetic import Injection, synthetic_sky
from ..io import outputs
from ..io.plots import candidate_plot, summary_plot
from .params import RecoverParams

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
    try:  # read from the installed metadata: the pipeline does not import Ray itself
        out["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:  # the in-process engine runs without ray
        pass
    return out


def load_catalogue(params: RecoverParams, progress: ProgressFn | None = None
                   ) -> tuple[dict, pa.Table, dict]:
    """Columns, raw table and provenance of the job's input: a Parquet catalogue, the Gaia
    archive (through the chunk cache) or the seeded synthetic sky."""
    target = params.stream
    if params.gaia:
        from ..data.gaia import GaiaArchive, RetryPolicy, fetch_region
        from ..io.cache import open_cache

        def chunk_progress(done: int, total: int) -> None:
            if progress is not None:
                progress(STAGES["load"] * done // max(total, 1), "load")

        cuts = params.cuts or target.default_cuts
        table, report, chunks = fetch_region(target.footprint, cuts,
                                             GaiaArchive(params.gaia_url),
                                             open_cache(params.cache), RetryPolicy.from_env(),
                                             progress=chunk_progress)
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
        else:  # a stream job: a catalogue of another part of the sky is a mistake, say so
            inside = int(target.footprint.contains(cols["ra"], cols["dec"]).sum())
            if inside == 0:
                raise CatalogueError(
                    f"input catalogue {params.input_path!r}: none of its {table.num_rows} "
                    f"rows lies in the footprint of {target.name} (ra "
                    f"{np.nanmin(cols['ra']):.1f}..{np.nanmax(cols['ra']):.1f}, dec "
                    f"{np.nanmin(cols['dec']):.1f}..{np.nanmax(cols['dec']):.1f} deg); see "
                    "`ray-app catalog` for where each stream lies, or search with --region")
            prov["rows_in_footprint"] = inside
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
    ConfigurationError
        The engine's configuration cannot run the job (the operator must act).
    """
    check_k = getattr(engine, "check_k", None)
    if check_k is not None:  # before any data is fetched
        check_k(params.n_neighbors)
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

    raw, _ = stream_features(params.stream.frame, clean["ra"], clean["dec"], clean["pmra"],
                             clean["pmdec"], clean["parallax"], params.scales)
    phi1, phi2, pm1, pm2 = (raw[n] for n in FEATURE_NAMES[:4])
    # a named stream is searched relative to its registry track, in a few frames tilted
    # about it (the registry can be off); a blind region without a frame in great-circle
    # frames of several orientations through its centre; a framed region in its frame
    track = getattr(params.stream, "detection_track", None)
    if track is not None:
        plan = [(tilt, 0.0, params.stream.frame, raw, track.tilted(tilt))
                for tilt in params.frame_tilts]
    else:
        plan = []
        for angle in params.frame_angles:
            frame = params.stream.frame.rotated(angle)
            feats = raw if angle == 0 else stream_features(
                frame, clean["ra"], clean["dec"], clean["pmra"], clean["pmdec"],
                clean["parallax"], params.scales)[0]
            plan.append((0.0, angle, frame, feats, None))
    tilts = [tilt for tilt, *_ in plan]
    scanning = track is None and len(plan) > 1
    # every frame the job may search is paid for in the look-elsewhere correction, the
    # refinements of an orientation scan included (whether or not they are needed)
    n_frames = len(plan) + (REFINE_FRAMES if scanning else 0)
    done("features")

    def frame_progress(i):
        return lambda frac: progress(STAGES["features"] + int(
            (STAGES["density"] - STAGES["features"]) * min(i + frac, n_frames) / n_frames),
            "density")

    searches = []
    for i, (tilt, angle, frame, feats, trk) in enumerate(plan):
        searches.append(_search(params, engine, feats, sid, trk, tilt, n_frames, timings,
                                frame_progress(i), angle=angle, frame=frame))
    if scanning:  # zoom: a frame along each promising structure, with a long phi1 scale
        for j, frame in enumerate(refine_frames(searches, clean, n_frames)):
            feats = stream_features(frame, clean["ra"], clean["dec"], clean["pmra"],
                                    clean["pmdec"], clean["parallax"], REFINE_SCALES)[0]
            searches.append(_search(params, engine, feats, sid, None, 0.0, n_frames, timings,
                                    frame_progress(len(plan) + j), angle=None, frame=frame,
                                    scales=REFINE_SCALES))
    t = time.perf_counter()  # the searches timed their own stages
    primary = searches[0]
    f, pers, cres, sharded, null = (primary.log_density, primary.pers, primary.cres,
                                    primary.sharded, primary.cres.null)
    progress(STAGES["merge"], "merge")
    merged = merge_searches([s.cres.candidates for s in searches])
    final = [c for _, c in merged]
    core_labels = candidate_labels(len(sid), final)
    phot = photometry_columns(clean, params.photometry, origin=str(params.input_path or
                                                                   provenance["kind"]))
    errors = feature_errors(clean)
    # each candidate is characterised in its own frame: the frame it was found in, or for a
    # scan, a great circle fitted to its core (a scan frame may be ~10 deg off the stream)
    own = [_own_frame(searches[which], c, clean, scanning) for which, c in merged]
    seeds = [membership_seed(searches[which].pers, searches[which].log_density, c)
             for which, c in merged]
    # a catalogue pre-selected with a proper-motion box: the model must know the box's edges
    cuts = [_motion_cuts(frame, frame_raw, clean) for frame, frame_raw in own]
    memberships = [membership_probabilities(
        frame_raw, seed, errors, None if phot is None else phot[:2],
        base_track=searches[which].track, cuts=cut)
        for (which, _), (_, frame_raw), seed, cut in zip(merged, own, seeds, cuts,
                                                          strict=True)]
    if scanning:  # a compact core can leave the direction open: the members then decide it
        for i, m in enumerate(memberships):
            better = _refit_frame(own[i][0], clean, m.probability >= params.member_probability)
            if better is not None:
                own[i] = (better, stream_features(better, clean["ra"], clean["dec"],
                                                  clean["pmra"], clean["pmdec"],
                                                  clean["parallax"], REFINE_SCALES)[0])
                cuts[i] = _motion_cuts(*own[i], clean=clean)
                memberships[i] = membership_probabilities(
                    own[i][1], seeds[i], errors, None if phot is None else phot[:2],
                    cuts=cuts[i])
    prob, labels = member_labels(len(sid), memberships, params.member_probability)
    if scanning and merged:
        # a scan shows (figure, stars.parquet) the diagram of the frame that found the most
        # significant candidate and the sky in that candidate's own frame
        primary = searches[merged[0][0]]
        f, pers, cres, sharded = (primary.log_density, primary.pers, primary.cres,
                                  primary.sharded)
        display_frame, shown = own[0]
        phi1, phi2, pm1, pm2 = (shown[n] for n in FEATURE_NAMES[:4])
    else:
        display_frame = primary.frame
    done("candidates")

    cand_json = []
    for (which, c), m, (own_frame, own_raw) in zip(merged, memberships, own, strict=True):
        members = np.flatnonzero(m.probability >= params.member_probability)
        summ = summarize_members(raw, members if len(members) else c.members)
        cand_json.append({
            "index": c.index, "significance": c.significance, "birth": c.birth,
            "death": c.death, "persistence": c.persistence,
            "peak_source_id": int(sid[c.peak]), "saddle_source_id": int(sid[c.saddle]),
            "essential": c.essential, "n_members": int(len(members)),
            "n_core": int(len(c.members)),
            **describe_track(own_frame, m, own_raw["phi1"][members]),
            "frame": {"track_tilt_deg": searches[which].tilt,
                      "orientation_deg": searches[which].angle,
                      "pole": [round(v, 5) for v in searches[which].frame.pole],
                      "membership_pole": [round(v, 5) for v in own_frame.pole]},
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
                       "features_relative_to_track": track.to_dict() if track else None,
                       "frame_tilts_deg": list(tilts),
                       "frame_orientations_deg": [x.angle for x in searches],
                       "features": list(FEATURE_NAMES),
                       "stars_frame": {"name": display_frame.name,
                                       "pole": list(display_frame.pole),
                                       "note": "frame of phi1, phi2 and the proper motions in "
                                               "stars.parquet and summary.png"},
                       **({"refinement": {"frames": REFINE_FRAMES, "sigma": REFINE_SIGMA,
                                          "scales": REFINE_SCALES.to_dict()}}
                          if scanning else {})},
        "counts": {"input_rows": n_input, "dropped_nan": n_input - n_clean, "stars": n_clean,
                   "finite_pairs": int(len(pers.peak)),
                   "essential_classes": int(len(pers.essential)),
                   "forest_edges": int(len(pers.forest_src)),
                   "candidates": len(final),
                   "knn_rows_requeried": int(sharded.requeried)},
        "significance": {
            "definition": "per-job look-elsewhere-corrected Gaussian-equivalent significance; "
                          "see ray_app/core/significance.py",
            "nominal_false_candidates_per_job": expected_false_candidates(
                params.sigma_threshold),
            "n_tests": cres.n_tests, "frames_searched": len(searches),
            "max_sigma": max(x.max_sigma for x in searches),
            "frames": [{"track_tilt_deg": x.tilt, "orientation_deg": x.angle,
                        "pole": list(x.frame.pole), "candidates": len(x.cres.candidates),
                        "max_sigma": x.max_sigma} for x in searches],
            **null.to_dict()},
        "membership": {
            "rule": f"membership probability >= {params.member_probability:g} (stream + "
                    "field mixture seeded by the persistence core; see "
                    "ray_app/core/membership.py)",
            "memberProbability": params.member_probability,
            "core": "death-level core of each pair (essential classes: key saddle), in "
                    "candidate_members.npz as core_<i>",
            "photometry": None if phot is None else {
                **phot[2], "used": True,
                "stars_with_photometry": int(np.sum(np.isfinite(phot[0])
                                                    & np.isfinite(phot[1]))),
                "rule": "colour-magnitude likelihood ratio learnt from the data: the "
                        "stream's density a background-subtracted Hess diagram (stars near "
                        "the track weighted by their kinematic membership probability, less "
                        "the off-track field with the same weights), the field's from the "
                        "off-track stars; the field's kinematic density is conditional on "
                        "colour and magnitude; stars without photometry are not members; the "
                        "stream's locus is learnt with each star's magnitude less the "
                        "stream's distance modulus at its phi1 relative to its own, measured "
                        "from the locus in ~10 deg phi1 bins of >= 100 members (per candidate "
                        "'distance_modulus_offset'; candidates.json track points)"},
            "errors": sorted(errors),
            "quality": "without photometry, a star's log proper-motion error (a brightness "
                       "proxy) enters as a learnt stream against field density; per candidate "
                       "'quality_term' says whether it was used",
            "motion_cuts": "hard edges of pmra and pmdec (else of the frame's proper "
                           "motions) found in the data, a proper-motion box the catalogue "
                           "was selected with, and the largest parallax: the field's density "
                           "is corrected for what its neighbourhoods lose beyond them "
                           "(mirrored stars) and the stream's normalised inside them; per "
                           "candidate 'motion_cuts' lists those found",
            "seed": "the candidate's superlevel component at half its persistence (at least "
                    "20 stars, else its core)",
            "candidates": [{"index": c.index, "iterations": m.iterations,
                            "stream_fraction": m.fraction, "widths": m.widths,
                            "fit_failed": m.failed, "quality_term": m.quality,
                            "distance_modulus_offset": None if m.cmd_shift is None else {
                                "phi1_deg": [round(float(x), 3) for x in m.cmd_shift[0]],
                                "mag": [round(float(x), 3) for x in m.cmd_shift[1]]},
                            "motion_cuts": [cut.describe() for cut in job_cuts]}
                           for c, m, job_cuts in zip(final, memberships, cuts, strict=True)]},
        "engine": {"name": engine.name, "backend": sharded.backend,
                   "shards": sharded.shards, "shard_seconds": sharded.shard_seconds,
                   "shard_axis": FEATURE_NAMES[sharded.axis], "halo": sharded.halo,
                   "halo_fixup_stars": sharded.halo_fixups,
                   "forest_retries": sharded.forest_retries,
                   "shard_nodes": sharded.placement, "shard_actors": sharded.actors,
                   "shard_memory_plan": sharded.memory_plan},
        "data": provenance,
        **({"truth": truth_scores(clean, sid, final, memberships,
                                  params.member_probability)}
           if "is_stream" in clean else {}),
        "software": _versions(),
        "timings_s": timings,
    }

    with outputs.atomic_output_dir(params.out_dir, params.overwrite) as tmp:
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
        arrays = {}
        for c, m in zip(final, memberships, strict=True):
            keep = m.probability >= params.member_probability
            arrays[f"candidate_{c.index}"] = sid[keep]
            arrays[f"probability_{c.index}"] = m.probability[keep]
            arrays[f"core_{c.index}"] = sid[c.members]
        outputs.write_members(tmp / "candidate_members.npz", arrays)
        computed = {"phi1": phi1, "phi2": phi2, "pm_phi1_cosphi2": pm1, "pm_phi2": pm2,
                    **{f"feat_{n}": primary.X[:, i] for i, n in enumerate(FEATURE_NAMES)},
                    "log_density": f, "candidate": labels, "member_probability": prob,
                    "core_candidate": core_labels}
        stars, renamed = outputs.merge_columns(clean, computed)
        metadata["stars_columns_renamed"] = renamed
        outputs.write_stars(tmp / "stars.parquet", stars)
        if params.write_ecsv:
            outputs.write_gaia_ecsv(tmp / "gaia_table.ecsv", table)
        source = Path(provenance["path"]).name if "path" in provenance else \
            provenance.get("uri") or provenance["kind"]
        title = (f"{params.stream.name} | data: {source} | {n_clean} stars, "
                 f"k={params.n_neighbors}, sigma >= {params.sigma_threshold:g}, members: "
                 f"p >= {params.member_probability:g}")
        summary_plot(tmp / "summary.png", births=f[pers.peak], deaths=f[pers.saddle],
                     pair_sigma=cres.pair_sigma, sigma_threshold=params.sigma_threshold,
                     candidates=cand_json, phi1=phi1, phi2=phi2, pm1=pm1, pm2=pm2,
                     probability=prob, label=labels,
                     tracks=[m.track if fr is display_frame
                             else track_polyline(m.track, fr, display_frame)
                             for (fr, _), m in zip(own, memberships, strict=True)],
                     member_threshold=params.member_probability, title=title,
                     photometry=phot)
        for c, m, (_, feats) in zip(cand_json, memberships, own, strict=True):
            candidate_plot(tmp / f"candidate_{c['index']}.png", index=c["index"],
                           significance=c["significance"], phi1=feats["phi1"], features=feats,
                           probability=m.probability,
                           member_threshold=params.member_probability, track=m.track,
                           title=params.stream.name,
                           magnitude=None if phot is None else (phot[0],
                                                                phot[2]["magnitude"]),
                           cmd_shift=m.cmd_shift)
        done("write")
        metadata["timings_s"] = timings
        metadata["persistence_summary"] = {
            "max_finite_persistence": float(finite.max()) if len(finite) else None}
        outputs.write_json(tmp / "metadata.json", metadata)
    return RunSummary(Path(params.out_dir), n_clean, len(final), cand_json, metadata)


def truth_scores(clean: dict, sid, final, memberships, threshold: float) -> list[dict]:
    """Precision and recall of each candidate's members against a synthetic sky's injected
    truth (``is_stream``), and of its core."""
    truth = np.asarray(clean["is_stream"], dtype=bool)
    out = []
    for c, m in zip(final, memberships, strict=True):
        members = m.probability >= threshold
        row = {"index": c.index, "injected": int(truth.sum())}
        for name, sel in (("", members), ("core_", np.isin(np.arange(len(sid)), c.members))):
            tp = int(np.sum(sel & truth))
            row[f"{name}precision"] = tp / max(int(sel.sum()), 1)
            row[f"{name}recall"] = tp / max(int(truth.sum()), 1)
        out.append(row)
    return out


def _motion_cuts(frame, frame_raw: dict, clean: dict) -> list:
    """The catalogue's proper-motion cuts in a candidate's frame (:func:`motion_cuts`)."""
    return motion_cuts(frame, clean["ra"], clean["dec"], clean["pmra"], clean["pmdec"],
                       frame_raw)


def feature_errors(cols: dict) -> dict:
    """Per-star 1-sigma errors of the frame features, where the catalogue has them.

    Proper-motion errors are taken as isotropic (the rotation into the frame mixes pmra and
    pmdec): sqrt((e_pmra^2 + e_pmdec^2) / 2). A catalogue with parallax_error but no
    proper-motion errors gets e_pm = parallax_error (Gaia DR3: sigma_pm [mas/yr] ~ sigma_plx
    [mas] at all magnitudes; DR2's are ~1.5x larger).
    """
    out = {}
    if "parallax_error" in cols:
        out["parallax"] = np.asarray(cols["parallax_error"], dtype=np.float64)
    if "pmra_error" in cols and "pmdec_error" in cols:
        e = np.sqrt(0.5 * (np.square(np.asarray(cols["pmra_error"], dtype=np.float64))
                           + np.square(np.asarray(cols["pmdec_error"], dtype=np.float64))))
        out["pm_phi1_cosphi2"] = out["pm_phi2"] = e
    elif "parallax" in out:
        out["pm_phi1_cosphi2"] = out["pm_phi2"] = out["parallax"]
    return out


def member_labels(n: int, memberships: list, threshold: float) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """Per star: the largest membership probability over the candidates, and the candidate
    it belongs to (the most probable one at or above ``threshold``; -1: none)."""
    if not memberships:
        return np.zeros(n), np.full(n, -1, dtype=np.int64)
    p = np.vstack([m.probability for m in memberships])
    best = np.argmax(p, axis=0)
    top = p[best, np.arange(n)]
    return top, np.where(top >= threshold, best, -1).astype(np.int64)


def describe_track(frame, m, member_phi1) -> dict:
    """candidates.json fields of a candidate's fitted track: the track itself, its length
    and width, and the registry stream it coincides with."""
    from ..core.frames import frame_to_icrs
    from ..data.registry import match_track

    if m.track is None:
        return {"track": [], "length_deg": 0.0, "width_deg": None, "match": None}
    pts = m.track.points()
    p1 = np.array([q["phi1"] for q in pts])
    ra, dec, pmra, pmdec = frame_to_icrs(frame, p1, np.array([q["phi2"] for q in pts]),
                                         np.array([q["pm_phi1_cosphi2"] for q in pts]),
                                         np.array([q["pm_phi2"] for q in pts]))
    lo, hi = member_extent(member_phi1) if len(member_phi1) else (0.0, 0.0)
    length = hi - lo
    # the distance modulus relative to the stream's own, from its colour-magnitude locus
    dm = (np.interp(p1, *m.cmd_shift) if m.cmd_shift is not None else [None] * len(pts))
    for q, a, d, mu_a, mu_d, off in zip(pts, ra, dec, pmra, pmdec, dm, strict=True):
        q.update(ra=round(float(a), 5), dec=round(float(d), 5), pmra=round(float(mu_a), 4),
                 pmdec=round(float(mu_d), 4),
                 distance_modulus_offset=None if off is None else round(float(off), 3))
    return {"track": pts, "length_deg": round(length, 3),
            "width_deg": round(m.widths.get("phi2", float("nan")), 4),
            "match": match_track(ra, dec, pmra, pmdec)}


@dataclass
class _Search:
    """One search of the job's stars in one frame (a tilt of the detection track, or an
    orientation of a blind region's scan)."""

    tilt: float
    track: object
    X: np.ndarray
    sharded: object
    pers: object
    cres: object
    raw: dict = None  # the frame's features (phi1, phi2, proper motions, parallax)
    angle: float | None = 0.0  # orientation of a scan frame (deg); None: refinement
    frame: object = None

    @property
    def log_density(self) -> np.ndarray:
        return self.sharded.log_density

    @property
    def max_sigma(self) -> float:
        sig = np.concatenate([self.cres.pair_sigma, self.cres.essential_sigma])
        sig = sig[np.isfinite(sig)]
        return float(sig.max()) if len(sig) else 0.0


#: An orientation scan (a blind region without a frame) is followed by up to this many
#: refinement frames: a great circle fitted to each of the scan's most significant
#: structures, searched with the long scales of a stream frame (REFINE_SCALES). The scan finds
#: where and roughly which way; the refinement measures the structure as a stream search
#: would. The look-elsewhere correction always counts all of them.
REFINE_FRAMES = 3
#: A scan structure at least this significant (per job, every frame counted) gets a
#: refinement frame.
REFINE_SIGMA = 2.5
#: Scales of the refinement frames: those of a framed region (a thin stream along phi1).
REFINE_SCALES = FeatureScales()


#: A structure defines a direction to fit a great circle along only when it is at least this
#: many times longer than wide on the sky (ratio of its two tangent-plane spreads).
MIN_ELONGATION = 2.0


def _fitted_frame(clean: dict, members, name: str):
    """A great circle through ``members`` (least squares), phi1 = 0 at their median position;
    None when they define no direction (too few, or not elongated: a round clump's fitted
    circle would point anywhere)."""
    from ..core.frames import StreamFrame, _unit_vectors, fit_great_circle_pole

    if len(members) < 5:
        return None
    ra, dec = clean["ra"][members], clean["dec"][members]
    v = _unit_vectors(ra, dec)
    w = np.linalg.eigvalsh(v @ v.T / v.shape[1])  # ascending: small spread, long spread, axis
    if w[0] <= 0 or np.sqrt(w[1] / w[0]) < MIN_ELONGATION:
        return None
    try:
        pole = fit_great_circle_pole(ra, dec)
        return StreamFrame.from_pole(*pole, float(np.median(ra)), float(np.median(dec)),
                                     name=name)
    except ValueError:  # a degenerate fit
        return None


#: Members whose great circle's pole lies this far (deg) from the frame they were modelled in
#: are modelled again in their own great circle.
REFIT_POLE_DEG = 5.0


def _refit_frame(frame, clean: dict, is_member: np.ndarray):
    """The members' own great circle when they are elongated along a direction the frame
    they were modelled in does not follow (pole more than :data:`REFIT_POLE_DEG` away)."""
    fitted = _fitted_frame(clean, np.flatnonzero(is_member), "members frame")
    if fitted is None:
        return None
    a, b = np.asarray(frame.rotation[2]), np.asarray(fitted.rotation[2])
    off = np.degrees(np.arccos(np.clip(abs(float(a @ b)), -1.0, 1.0)))
    return fitted if off > REFIT_POLE_DEG else None


def _own_frame(search, cand, clean: dict, scanning: bool):
    """(frame, raw features) in which a candidate's members are modelled."""
    if scanning and search.angle is not None:  # found by a scan frame: along its own core
        frame = _fitted_frame(clean, cand.members, "candidate frame")
        if frame is not None:
            raw = stream_features(frame, clean["ra"], clean["dec"], clean["pmra"],
                                  clean["pmdec"], clean["parallax"], REFINE_SCALES)[0]
            return frame, raw
    return search.frame, search.raw


def refine_frames(searches: list, clean: dict, n_frames: int) -> list:
    """Frames along the most significant structures of an orientation scan: a great circle
    fitted to each structure's core stars (at most :data:`REFINE_FRAMES`, structures sharing
    half their stars counted once), origin at the core's median position."""
    seeds = []
    for s in searches:
        found = candidates(s.pers, s.log_density, REFINE_SIGMA, s.cres.null,
                           max_candidates=REFINE_FRAMES, n_searches=n_frames)
        seeds += [(c.significance, c.members) for c in found.candidates]
    seeds.sort(key=lambda x: -x[0])
    kept = []
    for _sig, mem in seeds:
        if len(mem) < 5 or any(len(np.intersect1d(mem, k)) > 0.5 * min(len(mem), len(k))
                               for k in kept):
            continue
        kept.append(mem)
        if len(kept) == REFINE_FRAMES:
            break
    frames = [_fitted_frame(clean, mem, "refined frame") for mem in kept]
    return [f for f in frames if f is not None]


def _search(params: RecoverParams, engine, raw: dict, sid, track, tilt: float,
            n_searches: int, timings: dict, progress, angle: float | None = 0.0,
            frame=None, scales: FeatureScales | None = None) -> _Search:
    """Density, exact merge, null and candidates of the stars in one frame."""
    scales = scales or params.scales
    X = feature_matrix(relative_features(raw, track), scales)
    t0 = time.perf_counter()
    sharded = engine.density_and_forests(
        X, sid, params.n_neighbors, shards=params.shards,
        progress=lambda d, total: progress(d / max(total, 1)))
    t1 = time.perf_counter()
    pers = merge_forests(sharded.log_density, sid, sharded.forests)
    t2 = time.perf_counter()
    null = calibrate_null(X, sid, params.n_neighbors, seed=params.seed,
                          shuffle_cell=null_shuffle_cell(scales),
                          diagrams_of=getattr(engine, "null_diagrams", None))
    cres = candidates(pers, sharded.log_density, params.sigma_threshold, null,
                      n_searches=n_searches)
    t3 = time.perf_counter()
    for stage, dt in (("density", t1 - t0), ("merge", t2 - t1), ("calibration", t3 - t2)):
        timings[stage] = timings.get(stage, 0.0) + dt
    return _Search(tilt, track, X, sharded, pers, cres, raw=raw, angle=angle,
                   frame=frame if frame is not None else params.stream.frame)
