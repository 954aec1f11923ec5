"""E2E NLG: CSV reading, target-only loss, the five metrics against hand counts or a second implementation,
and the whole pipeline on tiny GPT-2 (per-slice q/v ranks of the fused c_attn)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, compose, shared_data, task_config

from autolora import metrics
from autolora.models import GPT2_BPE, ModelConfig, load_tokenizer
from autolora.tasks import build_task
from autolora.tasks.base import DataConfig, DataError
from autolora.tasks.e2e import IGNORE

FIXTURES = REPO / "tests" / "fixtures"


def fixture_data(limit=None) -> DataConfig:
    return DataConfig(source="local", data_dir=str(FIXTURES), max_train_samples=limit, max_eval_samples=limit)


def test_official_csv_quirks():
    """CRLF, quoted headers, a line break inside a quoted reference and '£'/'é' all parse."""
    splits = build_task(task_config("e2e")).load(fixture_data())
    assert len(splits.train) == 4 and len(splits.dev) == 3
    assert list(splits.train["target"])[2] == "Café Rouge costs more than £30. It is pricey."
    assert list(splits.train["source"])[3] == "name[Zizzi]"


def test_shared_e2e_counts():
    """The staged official files: 42,061 training records (not lines) and 630 unique test MRs."""
    data = shared_data()
    if data is None or not (data / "e2e").is_dir():
        pytest.skip("shared E2E data not present")
    splits = build_task(task_config("e2e")).load(DataConfig("local", str(data), None, None))
    assert len(splits.train) == 42061 and len(splits.dev) == 4693
    assert len(set(splits.dev["source"])) == 630


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
REFS = [["The Eagle is a low-priced coffee shop near Burger King.", "Near Burger King is The Eagle, a cheap coffee shop."],
        ["Zizzi is a French restaurant in the city centre.", "In the city centre, Zizzi serves French food."]]


def test_bleu_matches_nltk():
    """sacrebleu's corpus BLEU equals nltk's on the same tokens (two implementations)."""
    from nltk.translate.bleu_score import corpus_bleu

    expected = corpus_bleu([[metrics.nlg_tokens(r) for r in refs] for refs in REFS], [metrics.nlg_tokens(h) for h in HYPS])
    assert metrics.bleu(HYPS, REFS) == pytest.approx(expected, abs=1e-9)


def test_nist_and_rouge_by_hand():
    """NIST of 'a b' against 'a b': unigram info log2(2/1) = 1 each -> 1, bigram info log2(1/1) = 0 -> 1.0.
    ROUGE-L of 'a b c d' vs 'a c d e': LCS 3, P = R = 3/4 -> 0.75."""
    assert metrics.nist(["a b"], [["a b"]]) == pytest.approx(1.0)
    assert metrics.rouge_l(["a b c d"], [["a c d e"]]) == pytest.approx(0.75)


def test_rouge_and_cider_match_the_coco_scorer():
    """ROUGE-L and CIDEr equal pycocoevalcap's (the E2E metrics' scorer) on the same tokens."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap (extra `nlg`) not installed")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = [*HYPS, "A pub called The Mill."], [*REFS, ["The Mill is a pub.", "There is a pub called The Mill."]]
    gts = {i: [" ".join(metrics.nlg_tokens(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(metrics.nlg_tokens(h))] for i, h in enumerate(hyps)}
    assert metrics.rouge_l(hyps, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert metrics.cider(hyps, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_meteor_runs_or_is_reported_missing(monkeypatch):
    """With Java and pycocoevalcap, an exact match scores ~1; without Java, METEOR is None with a warning."""
    if shutil.which("java") and pytest.importorskip("pycocoevalcap", reason="pycocoevalcap not installed"):
        assert metrics.meteor(["the mill is a pub by the river"], [["the mill is a pub by the river"]]) > 0.99
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="METEOR skipped"):
        scores = metrics.e2e_scores(HYPS, REFS)
    assert scores["meteor"] is None and set(scores) == {"bleu", "nist", "meteor", "rouge_l", "cider"}


def test_tiny_gpt2_pipeline_with_per_slice_ranks(tmp_path):
    """search -> ranks -> retrain -> generate -> score on tiny GPT-2 and a handful of E2E rows: some c_attn
    ends with different q and v ranks, and the retrained model (and its peft export) has exactly those."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from autolora.pipeline import run

    cfg = compose("debug=tiny", "model=tiny-gpt2", "task=e2e", f"data.data_dir={FIXTURES}", "search.epochs=6",
                  "search.batch_size=2", "search.alpha_lr=0.05", "search.lr=0.01", "task.generation.num_beams=2",
                  "task.generation.max_new_tokens=8")
    record = run(cfg, tmp_path / "run")
    ranks = json.loads((tmp_path / "run" / "ranks.json").read_text())["ranks"]
    layers = {name.split(":")[0] for name in ranks}
    assert any(ranks[f"{layer}:q"] != ranks[f"{layer}:v"] for layer in layers), ranks
    assert set(record["retrain"]["dev"]) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    predictions = (tmp_path / "run" / "predictions.txt").read_text().splitlines()
    assert predictions[0] == "source\tgenerated" and len(predictions) == 1 + 2  # two unique test MRs
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "base_model")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    built = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    for layer in layers:
        total = ranks[f"{layer}:q"] + ranks[f"{layer}:v"]
        assert built.get(layer, 0) == total
    ids = torch.tensor([[464, 2068, 7586]])
    assert peft_model(input_ids=ids).logits.shape[-1] == 50257
