"""The planted-teacher study (analysis/planted.py): the teacher carries exactly the planted ranks, the control is
the backbone, and one tiny search end to end gives finite metrics and a write-up."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from autolora.analysis import planted, planted_report
from autolora.analysis.planted import Setting, Study

STUDY = Study()


@pytest.fixture(scope="module")
def base():
    return planted.backbone(STUDY, seed=0)


def test_the_planted_ranks_differ_between_query_and_value_and_span_zero_to_four(base):
    """The pattern under test: 8 matrices, q and v differ in every layer, rank 0 and rank 4 both present."""
    ranks = planted.planted_ranks(base)
    assert len(ranks) == 8
    for layer in range(STUDY.layers):
        query = ranks[f"encoder.layer.{layer}.attention.self.query"]
        value = ranks[f"encoder.layer.{layer}.attention.self.value"]
        assert query != value
    assert set(ranks.values()) == {0, 1, 2, 4}
    assert set(planted.planted_ranks(base, control=True).values()) == {0}


@pytest.mark.parametrize("strength", [0.25, 4.0])
def test_the_teacher_differs_from_the_backbone_by_exactly_the_planted_ranks(base, strength):
    """rank(W_teacher - W_backbone) = planted rank per target matrix; every other parameter is untouched."""
    ranks = planted.planted_ranks(base)
    teacher = planted.teacher(base, ranks, strength, seed=7)
    for name, rank in ranks.items():
        diff = teacher.get_submodule(name).weight - base.get_submodule(name).weight
        assert int(torch.linalg.matrix_rank(diff)) == rank, name  # float32 tolerance: the update was added in float32
        if rank:  # every planted direction has singular value s * ||W||_2
            sv = torch.linalg.svdvals(diff.double())[:rank]
            assert torch.allclose(sv, strength * torch.linalg.matrix_norm(base.get_submodule(name).weight.double(), 2)
                                  .expand(rank), rtol=1e-4)
    others = {n: p for n, p in teacher.named_parameters() if not any(n.startswith(t) for t in ranks)}
    assert others and all(torch.equal(p, base.get_parameter(n)) for n, p in others.items())


def test_the_control_teacher_gives_the_backbone_output_and_a_planted_one_does_not(base):
    """Without noise the control's targets are exactly the backbone's last hidden state; a planted teacher's are not."""
    control = planted.teacher(base, planted.planted_ranks(base, control=True), 1.0, seed=7)
    batches = planted.make_batches(control, 32, STUDY, noise=0.0, seed=3)
    with torch.no_grad():
        for batch in batches:
            out = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            assert torch.equal(out, batch["labels"])
    signal = planted.teacher(base, planted.planted_ranks(base), 1.0, seed=7)
    planted_batch = planted.make_batches(signal, 32, STUDY, noise=0.0, seed=3)[0]
    assert (planted_batch["labels"] - batches[0]["labels"]).abs().max() > 1e-2


def test_recovery_scores_a_perfect_and_a_constant_readout():
    """Found = planted: rho 1, 8 exact, no error, both zeros found; a constant readout has no rho."""
    truth = {f"m{i}": r for i, r in enumerate([0, 4, 1, 2, 2, 1, 4, 0])}
    perfect = planted.recovery(truth, truth, truth)
    assert perfect == {"spearman": pytest.approx(1.0), "exact": 8, "mae": 0.0, "zeros_hit": 2, "zeros_total": 2,
                       "mean_rank": 1.75}
    flat = planted.recovery(dict.fromkeys(truth, 8), truth, truth)
    assert math.isnan(flat["spearman"]) and flat["exact"] == 0 and flat["mae"] == pytest.approx(6.25)


def test_a_tiny_study_runs_end_to_end_and_writes_its_section(tmp_path):
    """Two 4-step searches (one planted, one control) through method.search give finite metrics per readout, and
    the write-up replaces only its own section of search_signal.md."""
    settings = [Setting(1.0, 32, 4, 0), Setting(0.0, 32, 4, 0, control=True)]
    records = planted.run_sweep(STUDY, settings, workers=1)
    keys = {f"{r}/{m}" for r in planted.READOUTS for m in planted.METRICS if m != "val_ratio"}
    assert keys | {"val_ratio", "planted", "gates/ranks", "init_gradient/gate_order_rho"} <= set(records[0])
    first = records[0]
    for key in ("gates/exact", "gates/mae", "released/mae", "svd/mae", "val_ratio"):
        assert math.isfinite(first[key]), key
    assert 0 < first["val_ratio"] < 1  # the student learned part of the teacher
    assert all(1 <= int(r) <= STUDY.k for r in first["gates/ranks"].split())  # softmax gates: never rank 0
    assert records[1]["planted"] == "0 0 0 0 0 0 0 0" and math.isnan(records[1]["svd/mae"])
    rows = planted.summarise(records)
    assert [row["control"] for row in rows] == [False, True]
    old = f"# Title\n\n{planted_report.SECTION}\nSTALE-TEXT\n\n## Other\nkept\n"
    (tmp_path / "search_signal.md").write_text(old)
    planted_report.write(tmp_path, STUDY, records, rows, seconds=1.0, workers=1)
    text = (tmp_path / "search_signal.md").read_text()
    assert "STALE-TEXT" not in text and text.count(planted_report.SECTION) == 1 and text.endswith("## Other\nkept\n")
    assert "| 1 | 32 | 4 |" in text and (tmp_path / planted_report.FIGURE).stat().st_size > 0


def test_the_init_alignment_is_the_frozen_weights_gradient_projected_on_each_row_of_a(base):
    """For one matrix, ‖G A_jᵀ‖ from a separate autograd pass over the same loss (G = ∂L/∂W of the frozen
    weight, B = 0) and ‖A_j‖; the frozen weights stay frozen and get no gradient left behind; the order
    agreement of a quantity with itself is 1 and with its reverse -1."""
    from autolora.analysis.planted import TARGETS, hidden_mse, init_alignment, inject, make_batches, order_agreement

    student = copy.deepcopy(base)
    inject(student, TARGETS, {n: STUDY.k for n in planted.planted_ranks(base)}, lora_alpha=16.0, dropout=0.0,
           alpha_norm="softmax", trainable_modules=[])
    batches = make_batches(base, 32, STUDY, STUDY.noise, seed=5)
    got = init_alignment(student, batches)
    name = sorted(got)[0]
    module = student.get_submodule(name)
    weight = module.base.weight.detach().clone().requires_grad_(True)
    reference = copy.deepcopy(student)
    reference.get_submodule(name).base.weight = torch.nn.Parameter(weight)
    loss = sum(hidden_mse(reference(input_ids=b["input_ids"], attention_mask=b["attention_mask"]), b)
               for b in batches) / len(batches)
    (grad,) = torch.autograd.grad(loss, reference.get_submodule(name).base.weight)
    A = module.parts[next(iter(module.parts))].A.detach()
    torch.testing.assert_close(torch.tensor(got[name]["gradient"]), (A @ grad.T).norm(dim=1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(torch.tensor(got[name]["norm"]), A.norm(dim=1))
    assert not any(m.base.weight.requires_grad or m.base.weight.grad is not None
                   for m in student.modules() if isinstance(m, planted.SelectableLoRA))
    values = {n: q["gradient"] for n, q in got.items()}
    assert order_agreement(values, values) == pytest.approx(1.0)
    assert order_agreement(values, {n: [-x for x in q] for n, q in values.items()}) == pytest.approx(-1.0)


def test_the_csv_is_written_whole_and_as_committed(tmp_path):
    """write_csv (atomic: a temporary file renamed over the old one) writes the committed records back byte for
    byte, and a failed write leaves the earlier file and no temporary behind."""
    import csv

    from conftest import REPO

    committed = REPO / "results" / "search_signal_planted.csv"
    with committed.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    out = tmp_path / "planted.csv"
    planted.write_csv(out, records)
    assert out.read_bytes() == committed.read_bytes()
    with pytest.raises(ValueError):
        planted.write_csv(out, [*records, {"not a column": 1}])
    assert out.read_bytes() == committed.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["planted.csv"]
