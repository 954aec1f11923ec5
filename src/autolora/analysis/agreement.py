"""Do seeds agree on the ranks? Pure functions of one value per (seed, matrix) (issue 19).

A table is an array of shape (seeds, matrices): the rank each seed's search gave each matrix, or a per-matrix
statistic of its gates. Matrices are the unit: components are not (their order within a matrix is arbitrary).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

UPDATE_NORM = "‖ΔW‖_F"  # readout_values' name for the learned update's Frobenius norm per matrix
PERMUTATIONS = 2000  # p-values resolve to 1/2001; the generator is seeded, so the report is reproducible


def pair_agreement(values: Sequence[float]) -> float:
    """Share of seed pairs that give one matrix the same value (1 = every seed agrees)."""
    pairs = list(itertools.combinations(values, 2))
    if not pairs:
        raise ValueError("agreement needs at least 2 seeds")
    return sum(a == b for a, b in pairs) / len(pairs)


def modal_agreement(values: Sequence[float]) -> float:
    """Share of seeds whose value is the most common one (1 = all agree, 1/seeds = all differ)."""
    return Counter(values).most_common(1)[0][1] / len(values)


def chance_agreement(table: np.ndarray) -> float:
    """Pair agreement expected if every seed drew each matrix's value independently from the pooled values:
    sum over values v of p(v)^2."""
    counts = np.array(list(Counter(np.asarray(table).ravel().tolist()).values()), dtype=float)
    return float(((counts / counts.sum()) ** 2).sum())


def _pair_correlations(ranked: np.ndarray) -> np.ndarray:
    """Pearson correlation of every seed pair over matrices, for (..., seeds, matrices) arrays of ranks;
    NaN where a seed is constant. Returns (..., pairs)."""
    centred = ranked - ranked.mean(axis=-1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=-1))
    pairs = list(itertools.combinations(range(ranked.shape[-2]), 2))
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centred[..., first, :] * centred[..., second, :]).sum(axis=-1) / (
            norms[..., first] * norms[..., second])


def spearman_pairs(table: np.ndarray) -> np.ndarray:
    """Spearman's rho (ties averaged) between the per-matrix values of every seed pair; NaN for a constant seed."""
    return _pair_correlations(rankdata(np.asarray(table, dtype=float), axis=-1))


def mean_spearman(table: np.ndarray) -> float | None:
    """Mean Spearman's rho over seed pairs; pairs with a constant seed are left out (None if every pair is)."""
    rhos = spearman_pairs(table)
    return None if np.isnan(rhos).all() else float(np.nanmean(rhos))


def consensus_spearman(table: np.ndarray) -> float | None:
    """Leave one seed out: Spearman's rho between the held-out seed's values and the mean of the other seeds'
    (ranks by consensus over N - 1 search seeds, issue #27's `search.seeds=N`), averaged over the held-out seeds;
    None with fewer than 3 seeds or when every held-out seed or consensus is constant."""
    table = np.asarray(table, dtype=float)
    if table.shape[0] < 3:
        return None
    rhos = []
    for held in range(table.shape[0]):
        consensus = np.delete(table, held, axis=0).mean(axis=0)
        rhos.append(spearman_pairs(np.stack([table[held], consensus]))[0])
    return None if np.isnan(rhos).all() else float(np.nanmean(rhos))


def permutation_p(table: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> float | None:
    """One-sided p-value of the mean Spearman's rho under 'matrices carry no identity across seeds': the
    matrix labels are shuffled independently within each seed. Small p = the seeds agree beyond chance."""
    observed = mean_spearman(table)
    if observed is None:
        return None
    ranked = rankdata(np.asarray(table, dtype=float), axis=-1)
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.broadcast_to(np.arange(ranked.shape[1]), (permutations, *ranked.shape)), axis=-1)
    shuffled = np.take_along_axis(np.broadcast_to(ranked, order.shape), order, axis=-1)  # (perm, seeds, matrices)
    with np.errstate(invalid="ignore"):
        null = np.nanmean(_pair_correlations(shuffled), axis=-1)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))


def seed_agreement(ranks: np.ndarray, entropies: np.ndarray | None) -> dict[str, float | None]:
    """The across-seed summary of one group: rank agreement (pairs, modal, chance), Spearman's rho of the ranks
    with its permutation p-value, and rho of the gate entropies; tables are (seeds, matrices)."""
    ranks = np.asarray(ranks)
    return {
        "pair_agreement": float(np.mean([pair_agreement(column.tolist()) for column in ranks.T])),
        "modal_agreement": float(np.mean([modal_agreement(column.tolist()) for column in ranks.T])),
        "chance_agreement": chance_agreement(ranks),
        "rank_spearman": mean_spearman(ranks),
        "rank_spearman_p": permutation_p(ranks),
        "entropy_spearman": None if entropies is None else mean_spearman(entropies),
        "entropy_spearman_p": None if entropies is None else permutation_p(entropies),
    }


def readout_values(ranks_file: Mapping) -> dict[str, dict[str, float]]:
    """Every readout a search's ranks.json holds (gates, released, energy, budget: matrix -> rank), and the
    Frobenius norm of each matrix's learned update ΔW from its singular values; {} for an older ranks.json."""
    values = {name: {m: float(r) for m, r in ranks.items()} for name, ranks in ranks_file.get("readouts", {}).items()}
    if ranks_file.get("update_spectra"):
        values[UPDATE_NORM] = {m: float(np.sqrt(np.sum(np.square(sv))))
                               for m, sv in ranks_file["update_spectra"].items()}
    return values


def by_readout(seeds: Sequence[Mapping[str, Mapping[str, float]]]) -> list[tuple[str, float, float | None,
                                                                                 float | None]]:
    """For each readout every seed holds (seeds: readout -> matrix -> value, one per seed): (readout, the mean
    value, the mean Spearman rho between seeds over the matrices, its permutation p)."""
    rows = []
    for readout in (r for r in seeds[0] if all(r in seed for seed in seeds)):
        names = sorted(seeds[0][readout])
        table = np.array([[seed[readout][n] for n in names] for seed in seeds])
        rows.append((readout, float(table.mean()), mean_spearman(table), permutation_p(table)))
    return rows
