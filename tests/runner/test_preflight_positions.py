"""preflight.check_positions: a max_length past a learned position table is one line; rotary and relative
positions have no table to run past."""

from __future__ import annotations

import pytest
from transformers import BertConfig, GPTNeoXConfig, LlamaConfig, Qwen2Config

from autolora.errors import ConfigError
from autolora.runner.preflight import check_positions


def test_a_learned_table_refuses_longer_rows_and_rotary_models_do_not():
    with pytest.raises(ConfigError, match="above the 512 positions of bert"):
        check_positions(BertConfig(max_position_embeddings=512), 513, "bert")
    check_positions(BertConfig(max_position_embeddings=512), 512, "bert")
    for config in (LlamaConfig(max_position_embeddings=64), Qwen2Config(max_position_embeddings=64),
                   GPTNeoXConfig(max_position_embeddings=64)):
        check_positions(config, 4096, type(config).__name__)  # rotary: no table, no error
