"""Pure metric functions on arrays, computed with scikit-learn and scipy (no hub scripts).

All scores are returned as plain floats on the 0–1 scale (correlations on -1..1); tables print x100.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of exact matches."""
    return float(accuracy_score(labels, predictions))


def binary_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


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
    """seqeval entity precision/recall/F1 in strict mode for the given scheme (IOB2, IOBES, IOE2), the
    per-type table, and the token (word) accuracy."""
    from seqeval import scheme as schemes
    from seqeval.metrics import classification_report

    report = classification_report(gold, predicted, mode="strict", scheme=getattr(schemes, scheme),
                                   output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    for average in ("macro avg", "weighted avg"):
        report.pop(average, None)
    flat_gold = [t for sentence in gold for t in sentence]
    flat_pred = [t for sentence in predicted for t in sentence]
    return {
        "f1": float(micro["f1-score"]), "precision": float(micro["precision"]), "recall": float(micro["recall"]),
        "token_accuracy": accuracy(flat_gold, flat_pred),
        "per_type": {kind: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                            "f1": float(v["f1-score"]), "support": int(v["support"])} for kind, v in report.items()},
    }


def classification_scores(labels: Sequence[int], predictions: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """The named classification metrics (accuracy, f1, mcc)."""
    table = {"accuracy": accuracy, "f1": binary_f1, "mcc": mcc}
    return {name: table[name](labels, predictions) for name in names}


def regression_scores(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation."""
    return {"pearson": pearson(labels, predictions), "spearman": spearman(labels, predictions)}


# --- E2E NLG challenge metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) over multi-reference sets --------------
# All texts are lower-cased and split into word and punctuation tokens (`nlg_tokens`) before scoring, the
# same way for every metric, as the COCO caption scorer does with its PTB tokenizer.


def nlg_tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens ('Café's £30.' -> ['café', "'", 's', '£', '30', '.'])."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (sacrebleu, on nlg_tokens; a varying number of references per hypothesis), 0–1."""
    import sacrebleu

    hyps = [" ".join(nlg_tokens(h)) for h in hypotheses]
    width = max(len(refs) for refs in references)
    streams = [[" ".join(nlg_tokens(refs[i])) if i < len(refs) else None for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score / 100


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST-5 (nltk), the E2E challenge's n. An n longer than every hypothesis adds a 0 term
    (nltk would divide by zero there), so n is capped at the longest hypothesis."""
    from nltk.translate.nist_score import corpus_nist

    hyps = [nlg_tokens(h) for h in hypotheses]
    n = min(max_n, max(map(len, hyps)))
    if n == 0:
        return 0.0
    return float(corpus_nist([[nlg_tokens(r) for r in refs] for refs in references], hyps, n=n))


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """ROUGE-L as the COCO caption scorer computes it: best LCS precision and recall over the references,
    combined as an F-measure with beta = 1.2, averaged over hypotheses."""
    scores = []
    for hyp, refs in zip(hypotheses, references, strict=True):
        h = nlg_tokens(hyp)
        lcs = [_lcs(nlg_tokens(r), h) for r in refs]
        precision = max(n / len(h) if h else 0.0 for n in lcs)
        recall = max(n / max(1, len(nlg_tokens(r))) for n, r in zip(lcs, refs, strict=True))
        scores.append(0.0 if precision == 0 or recall == 0 else
                      (1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return float(np.mean(scores))


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr as the COCO caption scorer behind the E2E metrics computes it (its `Cider` class): per n, the
    similarity of TF-IDF n-gram vectors with the hypothesis weights clipped by the reference's, a Gaussian
    length penalty (sigma 6; lengths counted in bigrams, as that scorer does), document frequencies over the
    reference sets; averaged over n and references, x10."""
    refs_tok = [[nlg_tokens(r) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in refs_tok:
        doc_freq.update({gram for r in refs for n in range(1, max_n + 1) for gram in _ngrams(r, n)})
    log_docs = np.log(float(len(refs_tok)))

    def vectors(tokens):
        vecs = [{g: tf * (log_docs - np.log(max(1.0, doc_freq[g]))) for g, tf in _ngrams(tokens, n).items()}
                for n in range(1, max_n + 1)]
        norms = [np.sqrt(sum(v * v for v in vec.values())) for vec in vecs]
        return vecs, norms, max(0, len(tokens) - 1)  # the scorer's "length": the number of bigrams

    scores = []
    for hyp, refs in zip(hypotheses, refs_tok, strict=True):
        hyp_vecs, hyp_norms, hyp_len = vectors(nlg_tokens(hyp))
        total = np.zeros(max_n)
        for ref in refs:
            ref_vecs, ref_norms, ref_len = vectors(ref)
            penalty = np.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(min(v, ref_vecs[n].get(g, 0.0)) * ref_vecs[n].get(g, 0.0) for g, v in hyp_vecs[n].items())
                if hyp_norms[n] and ref_norms[n]:
                    dot /= hyp_norms[n] * ref_norms[n]
                total[n] += dot * penalty
        scores.append(10.0 * total.mean() / len(refs))
    return float(np.mean(scores))


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
    """METEOR 1.5 through the COCO caption scorer (pycocoevalcap, which runs Java). None, with a warning,
    where Java or pycocoevalcap is missing: the other scores still come."""
    if shutil.which("java") is None:
        warnings.warn("METEOR skipped: no `java` on PATH (install a JRE to get it)", stacklevel=2)
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        warnings.warn("METEOR skipped: pycocoevalcap is not installed (pip install pycocoevalcap)", stacklevel=2)
        return None
    gts = {i: [" ".join(nlg_tokens(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(nlg_tokens(h))] for i, h in enumerate(hypotheses)}
    score, _ = Meteor().compute_score(gts, res)  # the Java process ends with the object
    return float(score)


def e2e_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """The E2E challenge's five metrics; METEOR is None where it cannot run."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("need one non-empty reference list per hypothesis")
    return {"bleu": bleu(hypotheses, references), "nist": nist(hypotheses, references),
            "meteor": meteor(hypotheses, references), "rouge_l": rouge_l(hypotheses, references),
            "cider": cider(hypotheses, references)}
