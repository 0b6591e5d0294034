"""Pipeline stages of one stream recovery, as plain functions of arrays.

``density`` (kNN + log-density) -> ``diagram`` (persistence from edges or merged forests) ->
``candidates`` (significance + members). The engine calls the same functions on shards; the
single-machine :func:`recover` chains them and is the reference the sharded run must equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .features import FEATURE_NAMES, FeatureScales
from .grid_knn import knn_grid
from .knn import knn_cpu, knn_xp, log_density
from .members import core_members
from .persistence import Persistence, knn_edges, persistence_from_edges
from .significance import NULL_MAX_STARS, NULL_ROUNDS, NullModel, fit_null, job_sigma


@dataclass
class DensityResult:
    """kNN and log-density of the query stars of one shard (or of all stars)."""

    indices: np.ndarray
    kth_distance: np.ndarray
    log_density: np.ndarray
    requeried: int


@dataclass
class Candidate:
    """A significant persistence pair with its members.

    ``members`` are vertex indices into the job's cleaned star arrays.
    """

    index: int
    significance: float
    birth: float
    death: float
    peak: int
    saddle: int
    essential: bool
    members: np.ndarray = field(repr=False)

    @property
    def persistence(self) -> float:
        return self.birth - self.death


@dataclass
class CandidateResult:
    candidates: list[Candidate]
    null: NullModel
    n_tests: int
    pair_sigma: np.ndarray
    essential_death: np.ndarray  # key-saddle level of each essential class (nan: none)
    essential_saddle: np.ndarray  # key-saddle vertex (-1: none)
    essential_sigma: np.ndarray


def density(X, source_id, k: int, n_total: int | None = None, query_rows=None,
            backend: str = "cpu", xp=None, workers: int = -1) -> DensityResult:
    """kNN and log-density (DESIGN 2.3-2.4) for the query rows of ``X``.

    Parameters
    ----------
    backend : {"cpu", "grid", "xp"}
        ``cpu``: cKDTree; ``grid``: multi-level cell grid on the array module ``xp`` (the GPU
        path); ``xp``: tiled brute force on ``xp``. All three give identical results.
    n_total : int, optional
        Global star count for the density normalisation (default: ``len(X)``).
    workers : int
        Threads of the CPU kNN query (-1: all cores).
    """
    n_total = len(X) if n_total is None else n_total
    if backend == "cpu":
        res = knn_cpu(X, source_id, k, query_rows=query_rows, workers=workers)
    elif backend == "grid":
        res = knn_grid(X, source_id, k, query_rows=query_rows, xp=np if xp is None else xp)
    elif backend == "xp":
        res = knn_xp(X, source_id, k, query_rows=query_rows, xp=np if xp is None else xp)
    else:
        raise ValueError(f"backend must be 'cpu', 'grid' or 'xp', got {backend!r}")
    f = log_density(res.kth_distance, k, n_total, X.shape[1])
    return DensityResult(res.indices, res.kth_distance, np.asarray(f), res.requeried)


def diagram(log_dens, source_id, indices) -> Persistence:
    """Persistence of the symmetrized kNN graph of all stars."""
    src, dst = knn_edges(indices)
    return persistence_from_edges(log_dens, source_id, src, dst)


def field_pairs(pers: Persistence, log_dens, background_ceiling: float) -> np.ndarray:
    """Mask of the pairs that are the field dying into a denser overdensity, not candidates.

    A dying component is the field when it holds more than half of all the stars, or more
    than half of the stars present at its death (those at least as dense as its saddle: it
    outnumbers the overdensity it joins and everything else at that level) with a peak no
    denser than ``background_ceiling`` (the background alone reaches it). The second form
    matters when the field is split: a job whose field was 51 % one component at its death
    had it found (half of all stars), one at 49.7 % (of the same field, in a frame 4 deg
    off) had it scored as a 6.5 sigma "stream" of 15 842 field stars (injection benchmark,
    Jhelum at 2000 members).
    """
    f = np.asarray(log_dens)
    young = np.asarray(pers.younger_size)
    present = np.asarray(pers.rank)[pers.saddle] + 1
    return (young * 2 > len(f)) | ((young * 2 > present)
                                   & (f[pers.peak] <= background_ceiling))


def essential_key_saddles(pers: Persistence, log_dens, background_ceiling: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key saddle of each essential class, its effective persistence, and how it was found.

    Two cases, in this order:

    * *the field dies into it*: a pair of :func:`field_pairs` (its dying component holds more
      than half of all the stars, or of those present at its death) is the field (a smooth
      background that is one big component), dying into a denser overdensity that holds the
      global maximum (a stream can: GD-1 is denser than any field star). Had the field's
      peak been higher, the overdensity would have been a finite pair dying at that same
      saddle: that saddle is its key saddle, and it is tested like a finite pair
      (``via_field`` True);
    * otherwise the lump is followed down through its merges, highest saddle first: a merging
      component whose peak is denser than ``background_ceiling`` (the highest density the
      background alone reaches, from the null copies) is part of the same overdensity; the
      first merge with a component the background can produce is where the lump meets the
      background. Tested against the null copies' essential classes, found the same way.

    An essential class with neither has no key saddle (-1, nan).
    """
    f = np.asarray(log_dens)
    n_ess = len(pers.essential)
    saddle = np.full(n_ess, -1, dtype=np.int64)
    via_field = np.zeros(n_ess, dtype=bool)
    if len(pers.peak) and n_ess:
        idx = np.flatnonzero(f[pers.peak] <= background_ceiling)
        if len(idx):
            # highest saddle first (saddles enter in rank order)
            idx = idx[np.argsort(pers.rank[pers.saddle[idx]], kind="stable")]
            elders, first = np.unique(pers.elder_peak[idx], return_index=True)
            key_of = dict(zip(elders.tolist(), pers.saddle[idx[first]].tolist(), strict=True))
            saddle = np.array([key_of.get(int(g), -1) for g in pers.essential], dtype=np.int64)
        field = np.flatnonzero(field_pairs(pers, f, background_ceiling))
        # several may die into one overdensity: the last (lowest saddle) is where it meets
        # the field
        field = field[np.argsort(pers.rank[pers.saddle[field]], kind="stable")]
        field_of = {int(pers.elder_peak[i]): int(pers.saddle[i]) for i in field}
        for j, g in enumerate(pers.essential.tolist()):
            if g in field_of:
                saddle[j] = field_of[g]
                via_field[j] = True
    eff = np.where(saddle >= 0, f[pers.essential] - f[np.maximum(saddle, 0)], np.nan)
    return saddle, eff, via_field


#: Kinematics are shuffled within sky cells this size (degrees, in the job's frame) to build
#: the null: the field's large-scale proper-motion gradients stay, streams do not.
NULL_CELL_DEG = 10.0


def null_shuffle_cell(scales: FeatureScales) -> tuple[float, float]:
    """The null's shuffle cell (:data:`NULL_CELL_DEG` in phi1 and phi2) in feature units."""
    return NULL_CELL_DEG / scales.phi1, NULL_CELL_DEG / scales.phi2


def local_permutation(X: np.ndarray, cell, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the rows that only moves stars within position cells.

    ``cell`` = (width along column 0, width along column 1) in feature units; ``None``
    permutes across all stars.
    """
    n = len(X)
    if cell is None:
        return rng.permutation(n)
    c0 = np.floor(X[:, 0] / cell[0]).astype(np.int64)
    c1 = np.floor(X[:, 1] / cell[1]).astype(np.int64)
    key = (c0 - c0.min()) * (int(c1.max() - c1.min()) + 1) + (c1 - c1.min())
    # both orders group the rows by cell, with the same group bounds: the i-th row of a cell
    # (in index order) takes its kinematics from the i-th row of the same cell in random order
    shuffled = np.lexsort((rng.uniform(size=n), key))
    perm = np.empty(n, np.int64)
    perm[np.argsort(key, kind="stable")] = shuffled
    return perm


def null_copies(X, source_id, seed: int = 0, max_stars: int = NULL_MAX_STARS,
                rounds: int = NULL_ROUNDS, shuffle_cell=None) -> list[tuple[np.ndarray,
                                                                           np.ndarray]]:
    """The shuffled copies of the job's stars that :func:`calibrate_null` measures.

    Each of ``rounds`` copies subsamples at most ``max_stars`` stars and permutes their
    kinematic features (columns 2-4: proper motions and parallax, jointly) across stars, within
    position cells of ``shuffle_cell`` (widths along feature columns 0 and 1; ``None``: across
    the whole job). Returns ``(X_copy, source_id_copy)`` pairs.
    """
    rng = np.random.default_rng(seed)
    n = len(X)
    out = []
    for _ in range(rounds):
        rows = np.sort(rng.choice(n, size=max_stars, replace=False)) if n > max_stars \
            else np.arange(n)
        Xs = X[rows].copy()
        Xs[:, 2:] = Xs[local_permutation(Xs, shuffle_cell, rng), 2:]
        out.append((Xs, np.asarray(source_id)[rows]))
    return out


def null_copy_k(k: int, n_copy: int) -> int:
    """The neighbour count a copy of ``n_copy`` stars is measured with."""
    return min(k, n_copy - 1)


def copy_diagrams(copies, k: int) -> list[tuple[np.ndarray, Persistence]]:
    """Log-density and diagram of each null copy, in this process."""
    out = []
    for Xs, sid in copies:
        d = density(Xs, sid, null_copy_k(k, len(Xs)))
        out.append((d.log_density, diagram(d.log_density, sid, d.indices)))
    return out


def null_from_diagrams(diagrams, n: int, k: int, max_stars: int = NULL_MAX_STARS
                       ) -> NullModel:
    """The null model of a job of ``n`` stars from its copies' ``(log_density, diagram)``."""
    finite = np.concatenate([f[p.peak] - f[p.saddle] for f, p in diagrams])
    if len(finite) < 8:
        raise ValueError(
            f"significance calibration needs at least 8 noise peaks; {n} stars at "
            f"nNeighbors={k} give {len(finite)} in {len(diagrams)} shuffled copies: use more "
            "stars or a smaller nNeighbors")
    null = fit_null(finite)
    # The background's highest density in a copy of n_sub stars; a job with more stars samples
    # the same background more often: its maximum rises by lambda * ln(N / n_sub) in the
    # exponential-tail model.
    n_sub = min(n, max_stars)
    ceiling = max(float(f.max()) for f, _ in diagrams) + null.scale * np.log(n / n_sub)
    keyed = [essential_key_saddles(p, f, ceiling) for f, p in diagrams]
    ess = np.concatenate([eff[~field] for _, eff, field in keyed])
    return replace(null, essential_null=np.sort(ess[np.isfinite(ess)]),
                   background_ceiling=float(ceiling))


def calibrate_null(X, source_id, k: int, seed: int = 0, max_stars: int = NULL_MAX_STARS,
                   rounds: int = NULL_ROUNDS, shuffle_cell=None, diagrams_of=None
                   ) -> NullModel:
    """Null model from shuffled copies of the job's own stars (see significance.py).

    The copies (:func:`null_copies`) keep the field's large-scale kinematic gradients (the
    solar reflex changes across a long footprint) when ``shuffle_cell`` is given, while a
    stream, narrow on the sky and coherent in motion, is destroyed. The kNN density estimates
    a probability density, so a subsample estimates the same density levels as the full job.

    ``diagrams_of(copies, k)`` measures the copies (default :func:`copy_diagrams`, in this
    process; an engine passes its own, so the copies' kNN runs on its actors); it must return
    what :func:`copy_diagrams` returns, which the exact sharded merge does.
    """
    copies = null_copies(X, source_id, seed, max_stars, rounds, shuffle_cell)
    diagrams = (diagrams_of or copy_diagrams)(copies, k)
    return null_from_diagrams(diagrams, len(X), k, max_stars)


def candidates(pers: Persistence, log_dens, sigma_threshold: float, null: NullModel,
               max_candidates: int = 100, n_searches: int = 1) -> CandidateResult:
    """Significance of every pair and the candidates at ``sigma_threshold``.

    Parameters
    ----------
    pers : Persistence
        The job's global diagram.
    null : NullModel
        From :func:`calibrate_null`.
    max_candidates : int
        At most this many candidates (the most significant) get member lists.
    n_searches : int
        How many searches of the same stars the job makes (frames tried); every test is
        counted that many times, so sigma stays a per-job figure (look-elsewhere over
        frames).
    """
    f = np.asarray(log_dens)
    finite = f[pers.peak] - f[pers.saddle]
    ess_saddle, ess_pers, via_field = essential_key_saddles(pers, f, null.background_ceiling)
    ess_death = np.where(ess_saddle >= 0, f[np.maximum(ess_saddle, 0)], np.nan)
    # A pair whose dying component holds most of the stars (all, or those present at its
    # death: field_pairs) is the field itself, dying into a denser overdensity that holds the
    # global maximum (a stream can): that overdensity is scored as an essential class at its
    # key saddle, the field is not a candidate.
    field = field_pairs(pers, f, null.background_ceiling)
    n_searches = max(int(n_searches), 1)
    n_tests = max(int(np.sum(~field)) + int(np.sum(ess_saddle >= 0)), 1) * n_searches
    pair_sigma = job_sigma(null.log_survival(finite), n_tests) if len(finite) else np.empty(0)
    pair_sigma = np.where(field, 0.0, pair_sigma)
    ess_sigma = np.full(len(ess_saddle), np.nan)
    has = ess_saddle >= 0
    if has.any():
        ess_sigma[has] = np.where(
            via_field[has], job_sigma(null.log_survival(ess_pers[has]), n_tests),
            job_sigma(null.log_survival_essential(ess_pers[has]), n_searches))

    rows = [(float(pair_sigma[i]), float(finite[i]), int(pers.peak[i]), int(pers.saddle[i]),
             False) for i in np.flatnonzero(pair_sigma >= sigma_threshold)]
    rows += [(float(ess_sigma[j]), float(ess_pers[j]), int(pers.essential[j]),
              int(ess_saddle[j]), True) for j in np.flatnonzero(has)
             if ess_sigma[j] >= sigma_threshold]
    rows.sort(key=lambda r: (-r[0], -r[1], int(pers.rank[r[2]])))
    cands = []
    for idx, (sig, _p, peak, saddle, ess) in enumerate(rows[:max_candidates]):
        members = core_members(pers.rank, pers.forest_src, pers.forest_dst, peak,
                               int(pers.rank[saddle]))
        cands.append(Candidate(idx, sig, float(f[peak]), float(f[saddle]), peak, saddle, ess,
                               members))
    return CandidateResult(cands, null, n_tests, pair_sigma, ess_death, ess_saddle, ess_sigma)


def merge_searches(searches: list[list[Candidate]], overlap: float = 0.5
                   ) -> list[tuple[int, Candidate]]:
    """One candidate list from several searches of the same stars (frames).

    Candidates are taken by decreasing significance; one that shares more than ``overlap``
    of the smaller member list with an accepted one describes the same structure and is
    dropped. Returns ``(search index, candidate)`` pairs, re-indexed 0.. in that order.
    """
    pool = sorted(((c.significance, len(c.members), s, c) for s, cs in enumerate(searches)
                   for c in cs), key=lambda r: (-r[0], -r[1], r[2]))
    kept: list[tuple[int, Candidate]] = []
    for _sig, _n, s, c in pool:
        mem = c.members
        if any(len(np.intersect1d(mem, k.members, assume_unique=True))
               > overlap * min(len(mem), len(k.members)) for _, k in kept):
            continue
        kept.append((s, replace(c, index=len(kept))))
    return kept


#: The membership seed is the candidate's superlevel component at this fraction of its
#: persistence below its peak (0: the peak alone; 1: the whole death-level core).
SEED_LEVEL = 0.5
#: A seed needs at least this many stars; a smaller one falls back to the whole core.
MIN_SEED = 20


def membership_seed(pers: Persistence, log_dens, cand: Candidate,
                    level: float = SEED_LEVEL) -> np.ndarray:
    """The densest part of a candidate's core, where its membership model starts.

    The death-level core of an essential class scored at a low key saddle can hold a large
    share of the field; the component of the peak at half the persistence is the structure
    itself in both cases (for a thin stream it is the core's upper half). Falls back to the
    core when that component has fewer than :data:`MIN_SEED` stars.
    """
    f = np.asarray(log_dens)
    cut = f[cand.peak] - level * (f[cand.peak] - f[cand.saddle])
    # ranks follow density downwards: the vertices at or above ``cut`` come first
    r_cut = int(np.sum(f >= cut))
    r_cut = max(r_cut, int(pers.rank[cand.peak]) + 1)
    seed = core_members(pers.rank, pers.forest_src, pers.forest_dst, cand.peak, r_cut)
    return seed if len(seed) >= MIN_SEED else cand.members


def candidate_labels(n: int, cands: list[Candidate]) -> np.ndarray:
    """Per-star candidate index (-1: none); a star in nested cores gets the innermost."""
    label = np.full(n, -1, dtype=np.int64)
    size = np.full(n, np.iinfo(np.int64).max)
    for c in cands:
        smaller = size[c.members] > len(c.members)
        label[c.members[smaller]] = c.index
        size[c.members[smaller]] = len(c.members)
    return label


def summarize_members(raw: dict, members: np.ndarray) -> dict:
    """Centroid (median) and spread (1.4826 MAD) of each raw feature over the members."""
    out = {}
    for name in FEATURE_NAMES:
        v = np.asarray(raw[name])[members]
        med = float(np.median(v))
        out[name] = {"centroid": med, "spread": float(1.4826 * np.median(np.abs(v - med)))}
    return out


@dataclass
class Recovery:
    dens: DensityResult
    pers: Persistence
    cands: CandidateResult


def recover(X, source_id, k: int, sigma_threshold: float, backend: str = "cpu", xp=None,
            seed: int = 0, shuffle_cell=None) -> Recovery:
    """Single-machine reference recovery (no sharding); ``shuffle_cell`` as in
    :func:`calibrate_null` (jobs use :func:`null_shuffle_cell` of their scales)."""
    d = density(X, source_id, k, backend=backend, xp=xp)
    p = diagram(d.log_density, source_id, d.indices)
    null = calibrate_null(X, source_id, k, seed=seed, shuffle_cell=shuffle_cell)
    c = candidates(p, d.log_density, sigma_threshold, null)
    return Recovery(d, p, c)
