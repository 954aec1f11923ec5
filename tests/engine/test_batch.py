"""Length buckets: batches padded to a few lengths so that each shape's captured step is reused."""

from __future__ import annotations

import torch

from autolora.engine.batch import LABEL_PAD, bucket_length, pad_to_bucket


def test_bucket_length_rounds_up_to_the_multiple_and_stops_at_max_length():
    """Lengths round up to the next multiple, never past max_length (the last bucket), and 1 disables it."""
    assert [bucket_length(n, 32, 128) for n in (1, 31, 32, 33, 97, 127, 128)] == [32, 32, 32, 64, 128, 128, 128]
    assert bucket_length(100, 32, 100) == 100
    assert [bucket_length(n, 1, 128) for n in (7, 33)] == [7, 33]


def test_pad_to_bucket_pads_each_sequence_tensor_with_its_neutral_value():
    """input_ids get the pad id, 2D labels the ignored label, masks 0; per-row labels stay; values kept."""
    ids = torch.tensor([[5, 6, 7], [8, 9, 1]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
             "token_type_ids": torch.zeros(2, 3, dtype=torch.long),
             "labels": torch.tensor([[2, 3, 4], [5, 6, LABEL_PAD]])}
    padded = pad_to_bucket(batch, 8, 128, pad_id=1)
    assert {k: tuple(v.shape) for k, v in padded.items()} == {k: (2, 8) for k in batch}
    assert torch.equal(padded["input_ids"][:, :3], ids) and (padded["input_ids"][:, 3:] == 1).all()
    assert (padded["attention_mask"][:, 3:] == 0).all() and (padded["labels"][:, 3:] == LABEL_PAD).all()
    per_row = pad_to_bucket({"input_ids": ids, "attention_mask": torch.ones(2, 3), "labels": torch.tensor([0, 1])},
                            8, 128, pad_id=1)
    assert torch.equal(per_row["labels"], torch.tensor([0, 1])) and per_row["input_ids"].shape == (2, 8)


def test_a_bucketed_batch_gives_the_same_classifier_loss():
    """Padding a batch on to its bucket (masked positions) leaves a tiny RoBERTa's loss unchanged."""
    from conftest import tiny_roberta, token_batch

    from autolora.models.runtime import four_d_attention_mask

    model = tiny_roberta()
    batch = {**token_batch(3, 7), "labels": torch.tensor([0, 1, 1])}
    batch["attention_mask"][2, 5:] = 0

    def loss(b):
        mask = four_d_attention_mask(b["attention_mask"], causal=False, attn_implementation="eager")
        logits = model(input_ids=b["input_ids"], attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(logits, b["labels"])

    torch.testing.assert_close(loss(pad_to_bucket(batch, 16, 32, pad_id=1)), loss(batch), rtol=1e-5, atol=1e-6)


def test_padding_counts_real_dynamic_and_bucketed_tokens():
    """The padding report's arithmetic on hand-made batches: rows 3+5 (dynamic 10, bucket 8 -> 16), row 9
    (bucket 16)."""
    from autolora.bench.padding import padded_tokens

    assert padded_tokens([[3, 5], [9]], 8, 128) == {"real": 17, "dynamic": 19, "bucketed": 32}
    assert padded_tokens([[3, 5], [9]], 8, 9) == {"real": 17, "dynamic": 19, "bucketed": 25}
