"""models.targets.attention_targets: the query and value projections of each attention block, found in the
model's structure for every architecture family the runner is tested on; fused projections as q/v slices
laid out as the architecture's forward pass reads them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from autolora.errors import TargetError
from autolora.method.layers import PartSpec
from autolora.models.targets import attention_targets, describe, find_targets, target_names

SMALL = dict(vocab_size=100, num_hidden_layers=2, intermediate_size=64)
FAMILIES = {  # model_type -> (config kwargs, head, the adapted matrices of layer 0)
    "distilbert": (dict(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64), "seq",
                   ["distilbert.transformer.layer.0.attention.q_lin",
                    "distilbert.transformer.layer.0.attention.v_lin"]),
    "mpnet": (dict(SMALL, hidden_size=32, num_attention_heads=2), "seq",
              ["mpnet.encoder.layer.0.attention.attn.q", "mpnet.encoder.layer.0.attention.attn.v"]),
    "electra": (dict(SMALL, hidden_size=32, embedding_size=16, num_attention_heads=2), "seq",
                ["electra.encoder.layer.0.attention.self.query", "electra.encoder.layer.0.attention.self.value"]),
    "deberta-v2": (dict(SMALL, hidden_size=32, num_attention_heads=2), "seq",
                   ["deberta.encoder.layer.0.attention.self.query_proj",
                    "deberta.encoder.layer.0.attention.self.value_proj"]),
    "gpt_neox": (dict(SMALL, hidden_size=32, num_attention_heads=2), "causal",
                 ["gpt_neox.layers.0.attention.query_key_value:q", "gpt_neox.layers.0.attention.query_key_value:v"]),
    "llama": (dict(SMALL, hidden_size=32, num_attention_heads=4, num_key_value_heads=2), "causal",
              ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]),
    "qwen2": (dict(SMALL, hidden_size=32, num_attention_heads=4, num_key_value_heads=2), "causal",
              ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]),
    "gpt2": (dict(vocab_size=100, n_embd=32, n_layer=2, n_head=2), "causal",
             ["transformer.h.0.attn.c_attn:q", "transformer.h.0.attn.c_attn:v"]),
}


def build(model_type: str, meta: bool = True):
    kwargs, head, _ = FAMILIES[model_type]
    config = AutoConfig.for_model(model_type, **kwargs)
    cls = AutoModelForSequenceClassification if head == "seq" else AutoModelForCausalLM
    with torch.device("meta" if meta else "cpu"):
        return cls.from_config(config, attn_implementation="eager"), config


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_query_and_value_of_every_attention_block(model_type):
    """Two matrices per layer, q before v, named as the architecture names them, recorded as found."""
    model, config = build(model_type)
    targets = attention_targets(model, config.num_attention_heads)
    names = target_names(model, targets)
    assert names[:2] == FAMILIES[model_type][2] and len(names) == 4
    assert names[2:] == [n.replace(".0.", ".1.") for n in names[:2]]
    assert describe(targets)["from"] == "architecture"


def test_gpt_neox_q_and_v_slices_are_the_rows_its_attention_reads_as_q_and_v():
    """GPT-NeoX's query_key_value holds [q | k | v] per head: the found parts' rows are exactly those that
    the model's own reshape (view(..., heads, 3 * head_size).chunk(3)) takes as queries and values."""
    model, config = build("gpt_neox", meta=False)
    targets = attention_targets(model, config.num_attention_heads)
    assert targets.groups == config.num_attention_heads == 2
    [(module, slices)] = list(find_targets(model, targets).items())[:1]
    projection = model.get_submodule(module)
    y = projection(torch.randn(3, config.hidden_size))  # (3, 3 * hidden)
    q, _, v = y.view(3, config.num_attention_heads, -1).chunk(3, dim=-1)  # the model's layout, per head
    wanted = {"q": q.reshape(3, -1), "v": v.reshape(3, -1)}
    for part, start, stop in slices:
        rows = [r for first, end, _ in PartSpec(part, start, stop, 1, targets.groups).runs(y.shape[-1])
                for r in range(first, end)]
        torch.testing.assert_close(y[:, rows], wanted[part], rtol=0, atol=0)


def test_a_fused_projection_with_grouped_keys_is_not_split_in_thirds():
    """A fused q/k/v whose output is not three times its input (fewer key/value heads) cannot be cut into
    equal thirds: no attention block is found there, and the error lists the linear layers."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj, self.o_proj = nn.Linear(8, 16), nn.Linear(8, 8)

    with pytest.raises(TargetError, match="found no attention block .*: its linear layers: qkv_proj, o_proj"):
        attention_targets(nn.ModuleList([Block()]), 2)
