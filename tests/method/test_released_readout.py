"""The released code's rank readout (search.readout=released) and its frozen search head (search.train_head)."""

from __future__ import annotations

import json

from conftest import compose

from autolora.method import ranks
from autolora.runner.pipeline import execute


def test_released_readout_counts_alphas_at_or_above_their_mean():
    alphas = {"a": [0.3, 0.1, 0.2, 0.2], "b": [1.0, 1.0, 1.0, 1.0], "c": [-2.0, 0.0, 5.0, 1.0]}
    # a: mean 0.2 -> 0.3, 0.2, 0.2; b: all equal (the start) -> undecided, min_rank; c: mean 1 -> 5, 1
    assert ranks.select_ranks_released(alphas) == {"a": 3, "b": 0, "c": 2}
    assert ranks.select_ranks_released(alphas, min_rank=2) == {"a": 3, "b": 2, "c": 2}


def test_released_readout_is_alpha_over_its_sum_for_a_positive_sum_and_shift_invariant():
    alpha = [0.5, 0.05, 0.2, 0.15, 0.3, 0.01, 0.4, 0.12]
    by_sum = sum(1 for a in alpha if a / sum(alpha) >= 1 / len(alpha))
    assert ranks.select_ranks_released({"m": alpha}) == {"m": by_sum}
    assert ranks.select_ranks_released({"m": [a - 7.0 for a in alpha]}) == {"m": by_sum}


def test_released_readout_differs_from_the_softmax_threshold():
    """softmax(alpha) >= 1/k keeps fewer components than alpha >= mean(alpha) when one alpha is far above the
    rest (Jensen: mean(exp) > exp(mean)): the two readouts are different rules, as docs/method.md §3 says."""
    import torch

    alpha = [3.0, 0.5, 0.4, 0.3]
    gates = torch.softmax(torch.tensor(alpha), -1).tolist()
    assert ranks.select_ranks({"m": gates}, 1 / 4) == {"m": 1}
    assert ranks.select_ranks_released({"m": alpha}) == {"m": 1}
    alpha = [1.0, 0.9, 0.8, -3.0]
    gates = torch.softmax(torch.tensor(alpha), -1).tolist()
    assert ranks.select_ranks({"m": gates}, 1 / 4) == {"m": 3}
    assert ranks.select_ranks_released({"m": alpha}) == {"m": 3}
    alpha = [1.0, 0.2, 0.1, 0.1]
    gates = torch.softmax(torch.tensor(alpha), -1).tolist()
    assert ranks.select_ranks({"m": gates}, 1 / 4) == {"m": 1}
    assert ranks.select_ranks_released({"m": alpha}) == {"m": 1}
    alpha = [1.0, 0.6, 0.0, 0.0]
    gates = torch.softmax(torch.tensor(alpha), -1).tolist()
    assert ranks.select_ranks({"m": gates}, 1 / 4) == {"m": 2}
    assert ranks.select_ranks_released({"m": alpha}) == {"m": 2}
    alpha = [1.0, 0.45, 0.0, 0.0]  # mean 0.3625: 0.45 counts; softmax: e^0.45 / sum = 0.24 < 1/4
    gates = torch.softmax(torch.tensor(alpha), -1).tolist()
    assert ranks.select_ranks({"m": gates}, 1 / 4) == {"m": 1}
    assert ranks.select_ranks_released({"m": alpha}) == {"m": 2}


def test_released_search_writes_its_readout_and_freezes_the_head(tmp_path):
    """ranks.json holds the raw alpha and the ranks the released readout gives on them; with train_head=false
    the search trains exactly the head's parameters fewer (the retrain trains the head either way)."""
    trained = {}
    for train_head in (True, False):
        run_dir = tmp_path / str(train_head)
        execute(compose("debug=tiny", "search.readout=released", f"search.train_head={str(train_head).lower()}"),
                run_dir)
        saved = json.loads((run_dir / "ranks.json").read_text())
        assert saved["readout"] == "released"
        assert saved["ranks"] == ranks.select_ranks_released(saved["raw_alpha"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        trained[train_head] = (metrics["search"]["trainable_params"], metrics["retrain"]["trainable_params"])
    hidden, labels = 32, 2  # debug=tiny: RoBERTa's head, dense hidden x hidden and out_proj hidden x labels
    head = hidden * hidden + hidden + hidden * labels + labels
    assert trained[True][0] - trained[False][0] == head
    assert trained[True][1] == trained[False][1]
