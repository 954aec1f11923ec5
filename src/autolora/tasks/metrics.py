"""Pure metric functions on predictions and references: scikit-learn and scipy (GLUE), seqeval (NER, as
conlleval counts and strict), sacrebleu plus mteval's NIST and pycocoevalcap (E2E, as the challenge's official
scorer computes them). No hub scripts.

All scores are returned as plain floats on the 0–1 scale (correlations on -1..1; NIST and CIDEr unbounded);
tables print x100.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import string
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of exact matches."""
    return float(accuracy_score(labels, predictions))


def binary_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def macro_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 scores (any number of classes)."""
    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def mcc(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0 when a side is constant."""
    return float(matthews_corrcoef(labels, predictions))


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson r (STS-B); 0 when either side is constant (undefined correlation)."""
    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    if labels.std() == 0 or predictions.std() == 0:
        return 0.0
    return float(pearsonr(labels, predictions).statistic)


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman rho (STS-B); 0 when either side is constant."""
    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    if labels.std() == 0 or predictions.std() == 0:
        return 0.0
    return float(spearmanr(labels, predictions).statistic)


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], scheme: str) -> dict:
    """Entity precision/recall/F1 and the per-type table as conlleval.pl counts them (seqeval's default mode:
    an I- tag after O or after another type starts an entity; what CoNLL results report), the same micro scores
    in seqeval's strict mode for the data's scheme (`*_strict`: only well-formed entities count), and the token
    (word) accuracy."""
    from seqeval import scheme as schemes
    from seqeval.metrics import classification_report

    def report(**mode) -> tuple[dict, dict]:
        table = classification_report(gold, predicted, output_dict=True, zero_division=0, **mode)
        for average in ("macro avg", "weighted avg"):
            table.pop(average, None)
        return table.pop("micro avg"), table

    micro, per_type = report()
    strict, _ = report(mode="strict", scheme=getattr(schemes, scheme))
    flat_gold = [t for sentence in gold for t in sentence]
    flat_pred = [t for sentence in predicted for t in sentence]
    return {
        "f1": float(micro["f1-score"]), "precision": float(micro["precision"]), "recall": float(micro["recall"]),
        "f1_strict": float(strict["f1-score"]), "precision_strict": float(strict["precision"]),
        "recall_strict": float(strict["recall"]), "token_accuracy": accuracy(flat_gold, flat_pred),
        "per_type": {kind: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                            "f1": float(v["f1-score"]), "support": int(v["support"])} for kind, v in per_type.items()},
    }


def classification_scores(labels: Sequence[int], predictions: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """The named classification metrics (accuracy, f1, mcc, macro_f1)."""
    table = {"accuracy": accuracy, "f1": binary_f1, "mcc": mcc, "macro_f1": macro_f1}
    return {name: table[name](labels, predictions) for name in names}


def regression_scores(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation."""
    return {"pearson": pearson(labels, predictions), "spearman": spearman(labels, predictions)}


# --- E2E NLG challenge metrics, as the challenge's official scorer computes them -------------------------------
# The official scorer (tuetschek/e2e-metrics, measure_scores.py) takes BLEU and NIST from the Perl mteval-v13a
# (its own tokenisation: ASCII letters lower-cased, 13a punctuation splitting) and METEOR 1.5, ROUGE-L and CIDEr
# from the COCO caption scorer, on text its Stanford PTB tokenizer (Java) lower-cased and stripped of punctuation.
# Here: sacrebleu's 13a tokenizer and BLEU, mteval's multi-reference NIST written out below, and pycocoevalcap's
# PTBTokenizer, Meteor, Rouge and Cider (the same jars and scorer code as the official scorer ships).
# Without Java (or pycocoevalcap) METEOR, ROUGE-L and CIDEr are None with a warning, never scored on a stand-in
# tokenisation: `python -m autolora.analysis.rescore RUN_DIR` adds them from predictions.txt on a machine with Java.

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
CAPTION_METRICS = ("meteor", "rouge_l", "cider")


def mteval_text(text: str) -> str:
    """mteval-v13a's case folding: ASCII letters only (its `tr/[A-Z]/[a-z]/`: 'CAFÉ' -> 'cafÉ')."""
    return text.translate(_ASCII_LOWER)


def mteval_tokens(text: str) -> list[str]:
    """mteval-v13a's tokens: its case folding, then sacrebleu's 13a splitting ("£30.50," -> '£30.50', ',')."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(mteval_text(text)).split()


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 as mteval-v13a computes it, 0-1: sacrebleu on the 13a tokens, the closest reference length
    (ties to the shorter) for the brevity penalty, mteval's "exp" smoothing; any number of references each.
    (The two differ only on corpora with no matching unigram or under 4 hypothesis words.)"""
    from sacrebleu.metrics import BLEU

    width = max(map(len, references))
    # sacrebleu wants one stream per reference position; None marks a hypothesis with fewer references
    streams = [[mteval_text(refs[i]) if i < len(refs) else None for refs in references] for i in range(width)]
    scorer = BLEU(tokenize="13a", smooth_method="exp", lowercase=False)
    return scorer.corpus_score([mteval_text(h) for h in hypotheses], streams).score / 100


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Every n-gram of 1..max_n tokens with its count."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def nist_brevity_penalty(ratio: float) -> float:
    """NIST's length penalty exp(-beta ln(ratio)^2) below ratio 1, beta such that ratio 2/3 gives 0.5."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = math.log(2) / math.log(1.5) ** 2  # -ln(0.5) / ln(3/2)^2
    return math.exp(-beta * math.log(ratio) ** 2)


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST-5 as mteval-v13a computes it (Doddington 2002) on the 13a tokens, with all references of
    each hypothesis at once: n-gram information weights from counts over every reference in the corpus, a
    hypothesis n-gram matching as often as it occurs in any one of its references, and the brevity penalty
    on the average reference length."""
    hyps = [mteval_tokens(h) for h in hypotheses]
    refs = [[mteval_tokens(r) for r in group] for group in references]
    ref_counts: Counter = Counter()
    for group in refs:
        for ref in group:
            ref_counts.update(_ngram_counts(ref, max_n))
    ref_words = sum(len(ref) for group in refs for ref in group)

    def info(gram: tuple[str, ...]) -> float:
        # information of the last word given the others: log2(count(w1..wn-1) / count(w1..wn)), with the
        # number of reference words in place of count() of the empty prefix
        return math.log2((ref_counts[gram[:-1]] if len(gram) > 1 else ref_words) / ref_counts[gram])

    gained, hyp_ngrams = [0.0] * max_n, [0] * max_n  # per n: summed information of matches; hypothesis n-grams
    for hyp, group in zip(hyps, refs, strict=True):
        most: Counter = Counter()
        for ref in group:
            most |= _ngram_counts(ref, max_n)  # | keeps each n-gram's largest count over the references
        for gram, count in _ngram_counts(hyp, max_n).items():
            if gram in most:
                gained[len(gram) - 1] += info(gram) * min(count, most[gram])
        for n in range(1, max_n + 1):
            hyp_ngrams[n - 1] += max(0, len(hyp) - n + 1)
    score = sum(g / max(count, 1) for g, count in zip(gained, hyp_ngrams, strict=True))
    # hypothesis words over (reference words / mean references per hypothesis) = mean hypothesis length over
    # mean reference length
    mean_refs = sum(map(len, refs)) / len(refs)
    return score * nist_brevity_penalty(sum(map(len, hyps)) / (ref_words / mean_refs))


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """The COCO caption scorer's tokenisation (pycocoevalcap's PTBTokenizer: Stanford CoreNLP 3.4.1, Java):
    lower-cased PTB tokens without punctuation tokens, space-joined, one string per text."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(texts)})
    return [tokenized[i][0] for i in range(len(texts))]


def _caption_dicts(hyp_tokens: Sequence[str], ref_tokens: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """The caption scorers' input: {i: references} and {i: [hypothesis]}."""
    return dict(enumerate(map(list, ref_tokens))), {i: [h] for i, h in enumerate(hyp_tokens)}


def rouge_l(hyp_tokens: Sequence[str], ref_tokens: Sequence[Sequence[str]]) -> float:
    """ROUGE-L of the COCO caption scorer on PTB-tokenised text (best LCS precision and recall over the
    references, F-measure with beta 1.2), averaged over hypotheses."""
    from pycocoevalcap.rouge.rouge import Rouge

    return float(Rouge().compute_score(*_caption_dicts(hyp_tokens, ref_tokens))[0])


def cider(hyp_tokens: Sequence[str], ref_tokens: Sequence[Sequence[str]]) -> float:
    """CIDEr of the COCO caption scorer on PTB-tokenised text (TF-IDF n-gram cosine for n = 1..4, document
    frequencies over the reference sets, Gaussian length penalty, x10), averaged over hypotheses."""
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score(*_caption_dicts(hyp_tokens, ref_tokens))[0])


def meteor(hyp_tokens: Sequence[str], ref_tokens: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 of the COCO caption scorer on PTB-tokenised text (Java; statistics pooled over
    the corpus, not averaged per hypothesis)."""
    from pycocoevalcap.meteor.meteor import Meteor

    score, _ = Meteor().compute_score(*_caption_dicts(hyp_tokens, ref_tokens))  # the Java process ends with it
    return float(score)


def caption_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """METEOR, ROUGE-L and CIDEr on the PTB tokens, as the E2E scorer computes them; all three None, with a
    warning, where Java or pycocoevalcap is missing (the PTB tokenizer they rest on runs in Java)."""
    missing = None if shutil.which("java") else "no `java` on PATH (install a JRE)"
    if missing is None and importlib.util.find_spec("pycocoevalcap") is None:
        missing = "pycocoevalcap is not installed (pip install pycocoevalcap)"
    if missing is not None:
        warnings.warn(f"METEOR, ROUGE-L and CIDEr skipped: {missing}; `python -m autolora.analysis.rescore RUN_DIR` "
                      "adds them from predictions.txt where Java runs", stacklevel=2)
        return dict.fromkeys(CAPTION_METRICS)
    tokens = iter(ptb_tokenize([*hypotheses, *(r for refs in references for r in refs)]))
    hyp_tokens = [next(tokens) for _ in hypotheses]
    ref_tokens = [[next(tokens) for _ in refs] for refs in references]
    return {"meteor": meteor(hyp_tokens, ref_tokens), "rouge_l": rouge_l(hyp_tokens, ref_tokens),
            "cider": cider(hyp_tokens, ref_tokens)}


def e2e_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """The E2E challenge's five metrics as its official scorer computes them (BLEU, METEOR, ROUGE-L on 0-1);
    METEOR, ROUGE-L and CIDEr are None where Java is missing."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("need one reference list per hypothesis")
    if any(not refs or any(not r.strip() for r in refs) for refs in references):
        raise ValueError("every hypothesis needs at least one reference and no reference may be blank")
    return {"bleu": bleu(hypotheses, references), "nist": nist(hypotheses, references),
            **caption_scores(hypotheses, references)}
