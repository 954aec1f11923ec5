"""Agreement of ranks across seeds: hand-computed shares, Spearman's rho against scipy, the permutation
p-value against exact enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import spearmanr

from autolora.analysis import agreement


def test_pair_modal_and_chance_agreement_by_hand():
    """MRPC layer 0 query 4, 3, 6: no pair agrees, the modal rank holds 1 of 3 seeds; 4, 4, 3: 1 of 3 pairs,
    2 of 3 seeds; the chance share of a table with values 1, 1, 1, 2 is (3/4)^2 + (1/4)^2."""
    assert agreement.pair_agreement([4, 3, 6]) == 0 and agreement.modal_agreement([4, 3, 6]) == pytest.approx(1 / 3)
    assert agreement.pair_agreement([4, 4, 3]) == pytest.approx(1 / 3)
    assert agreement.modal_agreement([4, 4, 3]) == pytest.approx(2 / 3)
    assert agreement.pair_agreement([5, 5, 5]) == 1 and agreement.modal_agreement([5, 5, 5]) == 1
    assert agreement.chance_agreement(np.array([[1, 2], [1, 1]])) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="2 seeds"):
        agreement.pair_agreement([4])


def test_spearman_pairs_equal_scipy_with_ties():
    """Every seed pair's rho equals scipy.stats.spearmanr on random integer ranks (many ties)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = rng.integers(1, 6, size=(4, 12))
        expected = [spearmanr(table[a], table[b])[0] for a, b in itertools.combinations(range(4), 2)]
        np.testing.assert_allclose(agreement.spearman_pairs(table), expected, atol=1e-12)


def test_constant_seeds_are_left_out_of_the_mean():
    """A seed with one rank everywhere has no rho: its pairs are left out; all constant gives None."""
    table = np.array([[1, 2, 3, 4], [1, 2, 4, 3], [5, 5, 5, 5]])
    assert agreement.mean_spearman(table) == pytest.approx(spearmanr(table[0], table[1])[0])
    assert agreement.mean_spearman(np.full((3, 4), 8)) is None and agreement.permutation_p(np.full((3, 4), 8)) is None


@pytest.mark.parametrize("second", [[1, 2, 3, 5, 4], [2, 1, 4, 3, 5], [5, 3, 1, 2, 4]])
def test_permutation_p_matches_exact_enumeration(second):
    """With 2 seeds and 5 matrices, the sampled p-value is within 0.03 of the exact share of the 120 relabellings
    whose rho reaches the observed one."""
    first = [1, 2, 3, 4, 5]
    observed = spearmanr(first, second)[0]
    exact = np.mean([spearmanr(first, [second[i] for i in order])[0] >= observed - 1e-12
                     for order in itertools.permutations(range(5))])
    assert agreement.permutation_p(np.array([first, second])) == pytest.approx(exact, abs=0.03)


def test_identical_seeds_agree_beyond_chance_and_shuffled_ones_do_not():
    """Three seeds with the same 8 ranks: pairs 1, rho 1, p < 0.01; independent shuffles: p well above 0.05."""
    same = np.tile(np.arange(1, 9), (3, 1))
    summary = agreement.seed_agreement(same, same.astype(float))
    assert summary["pair_agreement"] == 1 and summary["rank_spearman"] == pytest.approx(1.0)
    assert summary["rank_spearman_p"] < 0.01 and summary["entropy_spearman_p"] < 0.01
    shuffled = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [8, 1, 6, 3, 2, 7, 4, 5], [4, 7, 2, 8, 6, 1, 5, 3]])
    assert agreement.seed_agreement(shuffled, None)["rank_spearman_p"] > 0.05


def test_consensus_of_the_other_seeds_against_each_seed():
    """Three seeds that order four matrices the same way: the mean of any two orders them so too (rho 1); one seed
    reversed: held out, it disagrees with the others' mean (whose order is flat-ish), and the consensus of one
    agreeing and one reversed seed is constant, left out; fewer than 3 seeds: None."""
    same = np.array([[1, 2, 3, 4], [2, 3, 4, 5], [0, 1, 5, 9]])
    assert agreement.consensus_spearman(same) == pytest.approx(1.0)
    mixed = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1]])
    # held out 0 or 1: consensus of [1,2,3,4] and [4,3,2,1] is constant (NaN, left out); held out 2: rho -1
    assert agreement.consensus_spearman(mixed) == pytest.approx(-1.0)
    assert agreement.consensus_spearman(same[:2]) is None
