"""Which rule turns a finished search into ranks (search.readout): the gates' rules and the learned update's.

gates (the paper): rank = #{normalise(alpha) >= threshold} (ranks.select_ranks); released: the released code's
alpha >= mean(alpha) on the raw alpha (ranks.select_ranks_released). Both read how the gates spread inside one
matrix: under softmax about k/2 of them sit above the mean whatever the matrix is worth (issue #31).

The ΔW readouts read the learned update ΔW = scale · B diag(gate) A instead, through its singular values
(inject.update_spectra), which on the planted teacher carry the planted ranks where the gates do not
(results/search_signal.md):

- energy: per matrix the fewest components holding `energy` (e.g. 90%) of ‖ΔW‖_F²; 0 where ΔW = 0.
- budget: one allocation across all matrices: components are taken in order of σ² per parameter they cost, each
  matrix's largest first, until the parameter budget is spent; a matrix none of whose components made it gets 0.
  The budget is the gates readout's parameter count, so the two compare at equal parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from autolora.method import ranks as gate_rules

READOUTS = ("gates", "released", "energy", "budget")
Spectra = Mapping[str, tuple[Sequence[float], int]]  # name -> (singular values of ΔW, largest first; cost)


def energy_ranks(spectra: Spectra, energy: float, min_rank: int = 0) -> dict[str, int]:
    """rank_l = min{r : σ_1² + ... + σ_r² >= energy · Σ σ²} (0 where every σ is 0), raised to min_rank."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must lie in (0, 1], got {energy}")
    ranks = {}
    for name, (values, _) in spectra.items():
        squares = [float(v) ** 2 for v in values]
        total, kept, rank = sum(squares), 0.0, 0
        if total > 0:
            # relative slack: float rounding must not cost an extra component at energy = 1
            while kept < energy * total * (1.0 - 1e-12):
                kept += squares[rank]
                rank += 1
        ranks[name] = min(len(values), max(rank, min_rank))
    return ranks


def parameter_count(ranks: Mapping[str, int], spectra: Spectra) -> int:
    """Σ_l rank_l · (in_l + out_l): the LoRA parameters these ranks retrain."""
    return sum(rank * spectra[name][1] for name, rank in ranks.items())


def budget_ranks(spectra: Spectra, budget: int, min_rank: int = 0) -> dict[str, int]:
    """Greedy global allocation under `budget` parameters: min_rank components per matrix first, then components
    by σ² / cost, largest first (ties by name, then index: deterministic), each taken while it fits; a matrix's
    components come in its own order (σ sorted), and components with σ = 0 are never taken."""
    ranks = {name: min(min_rank, len(values)) for name, (values, _) in spectra.items()}
    left = budget - parameter_count(ranks, spectra)
    if left < 0:
        raise ValueError(f"budget {budget} is below the min_rank allocation's {budget - left} parameters")
    candidates = sorted(((float(v) ** 2 / cost, name, index) for name, (values, cost) in spectra.items()
                         for index, v in enumerate(values) if index >= ranks[name] and float(v) > 0),
                        key=lambda c: (-c[0], c[1], c[2]))
    for _, name, index in candidates:
        cost = spectra[name][1]
        if index == ranks[name] and cost <= left:  # the matrix's next component, and it fits
            ranks[name] += 1
            left -= cost
    return ranks


def select(readout: str, *, gates: Mapping[str, Sequence[float]], alphas: Mapping[str, Sequence[float]],
           spectra: Spectra, threshold: float, min_rank: int, energy: float) -> dict[str, int]:
    """The ranks of one readout; budget spends the gates readout's parameter count."""
    if readout == "gates":
        return gate_rules.select_ranks(gates, threshold, min_rank)
    if readout == "released":
        return gate_rules.select_ranks_released(alphas, min_rank)
    if readout == "energy":
        return energy_ranks(spectra, energy, min_rank)
    if readout == "budget":
        budget = parameter_count(gate_rules.select_ranks(gates, threshold, min_rank), spectra)
        return budget_ranks(spectra, budget, min_rank)
    raise ValueError(f"search.readout must be one of {READOUTS}, got {readout!r}")


def every_readout(**inputs) -> dict[str, dict[str, int]]:
    """Every readout's ranks from one search (ranks.json records them all: one search, several retrains)."""
    return {readout: select(readout, **inputs) for readout in READOUTS}
