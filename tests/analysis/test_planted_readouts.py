"""planted_readouts' tables from synthetic records: one row per (alpha_norm, eta, alpha lr, setting) and
readout, and the pooled line's Wilcoxon against the gates readout."""

from __future__ import annotations

from autolora.analysis import planted_readouts


def record(seed, alpha_lr, control=False, gates_rho=0.1, budget_rho=0.9):
    r = {"alpha_norm": "softmax", "eta": 0.01, "alpha_lr": alpha_lr, "control": control, "strength": 1.0,
         "n_train": 128, "steps": 1024, "seed": seed, "cpu_s": 60.0}
    for readout in planted_readouts.READOUTS:
        rho = {"gates": gates_rho, "budget": budget_rho}.get(readout, 0.5)
        r.update({f"{readout}/spearman": rho + seed / 100, f"{readout}/exact": 2, f"{readout}/mae": 1.0,
                  f"{readout}/zeros_hit": 1, f"{readout}/zeros_total": 2, f"{readout}/ranks": "1 2 3 4 0 1 2 1"})
    return r


def test_each_alpha_lr_gets_its_rows_and_its_pooled_line():
    records = [record(s, lr) for s in range(3) for lr in (0.01, 0.1)] + [record(0, 0.01, control=True)]
    rows = [line for line in planted_readouts.table(records).splitlines() if line.startswith("| softmax")]
    budget = [row for row in rows if "ΔW global budget" in row]
    assert len(budget) == 3 and "| 0.1 | 0 | 0 | 16 | 1 | 128 | 1024 | ΔW global budget | +0.91 ± 0.01 |" in budget[2]
    assert sum("control" in row for row in rows) == 4  # every readout but the oracle
    pooled = planted_readouts.pooled_lines(records)
    assert [line.split(",")[2] for line in pooled] == [" alpha_lr=0.01", " alpha_lr=0.1"]
    assert all(" alpha_warmup=0," in line and " val_batch_size=16," in line for line in pooled)
    assert "ΔW global budget ρ +0.91 ± 0.01 (> gates: p 0.12)" in pooled[1]


def test_a_larger_validation_batch_is_its_own_variant():
    """Records with val_batch_size 128 (8 batches per alpha step) form their own rows and pooled line; records
    without the key (made before the option) count as the study's batch of 16."""
    records = [record(s, 0.01) for s in range(3)] + [{**record(s, 0.01), "val_batch_size": 128} for s in range(3)]
    assert {planted_readouts.variant(r)[-1] for r in records} == {16, 128}
    pooled = planted_readouts.pooled_lines(records)
    assert len(pooled) == 2 and " val_batch_size=128," in pooled[1]
    assert sum("| 128 | 1 | 128 | 1024 |" in line for line in planted_readouts.table(records).splitlines()) == 5
