"""E2E NLG: CSV reading, target-only loss, the five metrics against hand counts or a second implementation,
and the whole pipeline on tiny GPT-2 (per-slice q/v ranks of the fused c_attn)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest
import torch
from conftest import REPO, compose, shared_data, task_config

from autolora.errors import DataError
from autolora.models.backbone import GPT2_BPE, ModelConfig, load_tokenizer
from autolora.tasks import build_task, metrics
from autolora.tasks.base import DataConfig
from autolora.tasks.e2e import IGNORE

FIXTURES = REPO / "tests" / "fixtures"


def fixture_data(limit=None) -> DataConfig:
    return DataConfig(source="local", data_dir=str(FIXTURES), max_train_samples=limit, max_eval_samples=limit)


def test_official_csv_quirks():
    """CRLF, quoted headers, a line break inside a quoted reference and '£'/'é' all parse."""
    splits = build_task(task_config("e2e")).load(fixture_data())
    assert len(splits.train) == 4 and len(splits.test) == 3 and splits.dev is None  # scored on test
    assert list(splits.train["target"])[2] == "Café Rouge costs more than £30. It is pricey."
    assert list(splits.train["source"])[3] == "name[Zizzi]"


def test_shared_e2e_counts():
    """The staged official files: 42,061 training records (not lines) and 630 unique test MRs."""
    data = shared_data()
    if data is None or not (data / "e2e").is_dir():
        pytest.skip("shared E2E data not present")
    splits = build_task(task_config("e2e")).load(DataConfig("local", str(data), None, None))
    assert len(splits.train) == 42061 and len(splits.test) == 4693
    assert len(set(splits.test["source"])) == 630


def test_malformed_record_names_file_and_line(tmp_path):
    """A record with a third field stops the run with the file and its line."""
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "trainset.csv").write_text('mr,ref\n"a[b]","ok"\n"a[b]","x","extra"\n')
    (tmp_path / "e2e" / "testset_w_refs.csv").write_text('mr,ref\n"a[b]","ok"\n')
    with pytest.raises(DataError, match=r"trainset.csv:3: expected 2 fields, found 3"):
        build_task(task_config("e2e")).load(DataConfig("local", str(tmp_path), None, None))


def _gpt2_tokenizer():
    cfg = ModelConfig(name="t", kind="decoder", path=None, config={"model_type": "gpt2"}, tokenizer=GPT2_BPE,
                      targets=None, head_modules=(), attn_implementation="eager", fan_in_fan_out=True,
                      gguf_file=None, special_tokens=None)
    return load_tokenizer(cfg)


def test_loss_is_on_the_reference_only():
    """Labels are -100 on the MR and separator; the reference and EOS carry their own ids."""
    task = build_task(task_config("e2e"))
    tokenizer = _gpt2_tokenizer()
    encoded = task.encode(build_task(task_config("e2e")).load(fixture_data(1)).train, tokenizer)
    ids, labels = encoded[0]["input_ids"], encoded[0]["labels"]
    prompt = task.prompt_ids(tokenizer, "name[The Mill], eatType[pub], area[riverside]")
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt):-1]) == " The Mill is a pub by the river."
    batch = task.collate(tokenizer)([encoded[0], {"input_ids": ids[:3], "labels": labels[:3]}])
    assert batch["labels"][1, 3:].eq(IGNORE).all() and batch["attention_mask"][1, 3:].eq(0).all()


HYPS = ["The Eagle is a cheap coffee shop near Burger King.", "Zizzi serves French food in the city centre."]
REFS = [["The Eagle is a low-priced coffee shop near Burger King.",
         "Near Burger King is The Eagle, a cheap coffee shop."],
        ["Zizzi is a French restaurant in the city centre.", "In the city centre, Zizzi serves French food."]]
needs_java = pytest.mark.skipif(shutil.which("java") is None or importlib.util.find_spec("pycocoevalcap") is None,
                                reason="the caption metrics need Java and pycocoevalcap (extra `nlg`)")


def test_mteval_tokens_by_hand():
    """mteval-v13a tokens: only ASCII letters lower-cased; '.'/',' split off except between digits; apostrophes,
    hyphens and '£' stay inside words."""
    assert metrics.mteval_tokens("CAFÉ Rouge's £30.50, non-stop.") == [
        "cafÉ", "rouge's", "£30.50", ",", "non-stop", "."]
    assert metrics.mteval_tokens("1,000 (a/b)") == ["1,000", "(", "a", "/", "b", ")"]


def test_bleu_by_hand():
    """Two hypotheses 'a b c d', every n-gram found in some reference (precisions 1). The first has references of
    3 and 5 words, equally close: mteval takes the shorter (3); the second has one of 6. BP = exp(1 - 9/8)."""
    refs = [["a b c", "a b c d e"], ["a b c d e f"]]
    assert metrics.bleu(["a b c d", "a b c d"], refs) == pytest.approx(math.exp(-1 / 8))
    assert metrics.bleu(["The Mill, by the river."], [["the mill , by the river ."]]) == pytest.approx(1.0)


def test_nist_by_hand():
    """'a b x' vs refs 'a b' | 'x y': 4 reference words, each unigram's info log2(4/1) = 2 and 'a b' log2(1/1) = 0;
    a, b, x all match (against different references) -> 6/3 = 2; mean ref length 2 < 3 -> no penalty.
    'a b' vs 'a b' | 'a b c d': info(a) = info(b) = log2(6/2), so 2 log2(3) / 2; the penalty uses the mean
    reference length 3 (not the closest, 2): ratio 2/3 -> 0.5."""
    assert metrics.nist(["a b x"], [["a b", "x y"]]) == pytest.approx(2.0)
    assert metrics.nist(["a b"], [["a b", "a b c d"]]) == pytest.approx(0.5 * math.log2(3))
    assert metrics.nist_brevity_penalty(2 / 3) == pytest.approx(0.5)
    assert metrics.nist_brevity_penalty(1.2) == 1.0 and metrics.nist_brevity_penalty(0.0) == 0.0


def test_rouge_l_and_cider_by_hand():
    """ROUGE-L of 'a b c d' vs 'a c d e': LCS 3, P = R = 3/4 -> 0.75; adding reference 'a b' the scorer takes the
    best P (3/4) and best R (2/2) separately: 2.44 * 0.75 / (1 + 1.44 * 0.75). CIDEr: a hypothesis equal to its
    one reference scores 10 when no n-gram occurs in the other reference set, a disjoint one 0 -> mean 5."""
    assert metrics.rouge_l(["a b c d"], [["a c d e"]]) == pytest.approx(0.75)
    assert metrics.rouge_l(["a b c d"], [["a c d e", "a b"]]) == pytest.approx(2.44 * 0.75 / (1 + 1.44 * 0.75))
    assert metrics.cider(["a b c d", "e f g h"], [["a b c d"], ["w x y z"]]) == pytest.approx(5.0)


# The official E2E scorer (github.com/tuetschek/e2e-metrics @ 1b9c4d8, measure_scores.py, with the METEOR and
# CoreNLP jars byte-identical to pycocoevalcap 1.2's), run on tests/fixtures/e2e_metrics/{references,outputs}.txt
# on 2026-12-01: its CLI printed BLEU 0.3473, NIST 4.8121, METEOR 0.3679, ROUGE_L 0.6248, CIDEr 2.8961. The digits
# below come from the same run: METEOR/ROUGE-L/CIDEr from its COCO evaluator's return values, BLEU/NIST from its
# mteval-v13a-sig.pl with only the final printf widened to 12 decimals.
OFFICIAL_FIXTURE = {"bleu": 0.347295324406, "nist": 4.812111991499, "meteor": 0.3678792840528362,
                    "rouge_l": 0.624769449869168, "cider": 2.8961329524198773}


def _fixture_set():
    folder = FIXTURES / "e2e_metrics"
    groups = (folder / "references.txt").read_text(encoding="utf-8").strip("\n").split("\n\n")
    return (folder / "outputs.txt").read_text(encoding="utf-8").splitlines(), [g.split("\n") for g in groups]


def test_bleu_and_nist_equal_the_official_scorer():
    """On a 6-output set with 1-3 references ('£', 'é', 'CAFÉ', hyphens, a short output), BLEU and NIST equal
    the official scorer's."""
    hypotheses, references = _fixture_set()
    assert metrics.bleu(hypotheses, references) == pytest.approx(OFFICIAL_FIXTURE["bleu"], abs=1e-9)
    assert metrics.nist(hypotheses, references) == pytest.approx(OFFICIAL_FIXTURE["nist"], abs=1e-9)


@pytest.mark.slow  # three Java scorers start: 10 s
@needs_java
def test_caption_metrics_equal_the_official_scorer():
    """On the same set, METEOR, ROUGE-L and CIDEr on the PTB tokens equal the official scorer's; the PTB
    tokenizer lower-cases, drops punctuation tokens and splits off clitics."""
    assert metrics.ptb_tokenize(["Café Rouge's prices, non-stop."]) == ["café rouge 's prices non-stop"]
    scores = metrics.e2e_scores(*_fixture_set())
    for name in metrics.CAPTION_METRICS:
        assert scores[name] == pytest.approx(OFFICIAL_FIXTURE[name], abs=1e-9), name


# The official scorer's printout (`measure_scores.py -t`, same set-up as OFFICIAL_FIXTURE, 2026-12-01) for the two
# committed E2E runs: their predictions.txt outputs against testset_w_refs.csv's references grouped per MR.
OFFICIAL_COMMITTED = {"e2e-autolora-s0": (0.5786, 6.8393, 0.3807, 0.6464, 1.5737),
                      "e2e-lora-s0": (0.5780, 7.0121, 0.3836, 0.6470, 1.5852)}


@pytest.mark.slow
@needs_java
@pytest.mark.parametrize("run", sorted(OFFICIAL_COMMITTED))
def test_committed_predictions_score_as_the_official_script(run):
    """The committed E2E predictions (630 MRs, 4,693 references) score as the official script printed them, to
    its 4 decimals."""
    from autolora import predictions

    data = shared_data()
    if data is None or not (data / "e2e").is_dir():
        pytest.skip("shared E2E data not present")
    test = build_task(task_config("e2e")).load(DataConfig("local", str(data), 1, None)).test  # E2E is scored on test
    references: dict[str, list[str]] = {}
    for source, target in zip(test["source"], test["target"], strict=True):
        references.setdefault(source, []).append(target)
    found = predictions.read(REPO / "results" / "runs" / "e2e" / run)  # an older run: predictions.txt
    generated = {record["source"]: record["generated"] for record in found.records}
    scores = metrics.e2e_scores([generated[s] for s in references], list(references.values()))
    assert tuple(scores.values()) == pytest.approx(OFFICIAL_COMMITTED[run], abs=5.1e-5)


def test_caption_metrics_are_reported_missing_without_java(monkeypatch):
    """Without Java, METEOR, ROUGE-L and CIDEr are None with one warning; BLEU and NIST still come."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="METEOR, ROUGE-L and CIDEr skipped"):
        scores = metrics.e2e_scores(HYPS, REFS)
    assert list(scores) == ["bleu", "nist", "meteor", "rouge_l", "cider"]
    assert scores["meteor"] is scores["rouge_l"] is scores["cider"] is None and scores["nist"] > 0
    with pytest.raises(ValueError, match="blank"):
        metrics.e2e_scores(["a"], [[" "]])


def test_tiny_gpt2_pipeline_with_per_slice_ranks(tmp_path, monkeypatch):
    """search -> ranks -> retrain -> generate -> score on tiny GPT-2 and a handful of E2E rows: some c_attn
    ends with different q and v ranks, and the retrained model (and its peft export) has exactly those;
    autolora.analysis.rescore on a machine without Java gets BLEU and NIST back from predictions.jsonl, under "test".
    (The run itself skips the Java scorers' start-up, seconds a call; test_meteor_* and the rescore run them.)"""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from autolora.analysis.rescore import rescore
    from autolora.runner.pipeline import execute

    cfg = compose("debug=tiny", "model=tiny-gpt2", "task=e2e", f"data.data_dir={FIXTURES}", "search.epochs=6",
                  "search.evaluate=false", "search.batch_size=2", "search.alpha_lr=0.05", "search.lr=0.01",
                  "task.generation.num_beams=2", "task.generation.max_new_tokens=8")
    with monkeypatch.context() as patch:
        patch.setattr(metrics, "caption_scores", lambda hypotheses, references: dict.fromkeys(metrics.CAPTION_METRICS))
        record = execute(cfg, tmp_path / "run")
    ranks = json.loads((tmp_path / "run" / "ranks.json").read_text())["ranks"]
    layers = {name.split(":")[0] for name in ranks}
    assert any(ranks[f"{layer}:q"] != ranks[f"{layer}:v"] for layer in layers), ranks
    assert record["retrain"]["eval_split"] == "test" and "dev" not in record["retrain"]
    assert set(record["retrain"]["test"]) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert lines[0] == {"predictions": "generation", "version": 1, "count": 2} and len(lines) == 1 + 2  # 2 MRs
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="METEOR, ROUGE-L and CIDEr skipped"):
        rescored = rescore(tmp_path / "run", str(FIXTURES))
    assert rescored["eval_split"] == "test"
    assert ({k: rescored["test"][k] for k in ("bleu", "nist")}
            == {k: record["retrain"]["test"][k] for k in ("bleu", "nist")})
    assert rescored["n_sources"] == 2 and rescored["test"]["meteor"] is None
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    built = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    for layer in layers:
        total = ranks[f"{layer}:q"] + ranks[f"{layer}:v"]
        assert built.get(layer, 0) == total
    ids = torch.tensor([[464, 2068, 7586]])
    assert peft_model(input_ids=ids).logits.shape[-1] == 50257
