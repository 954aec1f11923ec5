"""The selectable-rank LoRA layer against dense, naive computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from autolora.method.layers import PartSpec, SelectableLoRA, initial_alpha, normalise, sparsemax
from autolora.models.targets import WHOLE


def _linear(in_f=6, out_f=9, seed=0, dtype=torch.float64) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f).to(dtype)


def _randomise(layer: SelectableLoRA, seed=1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _whole(layer: nn.Module, rank: int, alpha_norm, lora_alpha=16.0) -> SelectableLoRA:
    out = layer.weight.shape[1] if isinstance(layer, Conv1D) else layer.out_features
    wrapped = SelectableLoRA(layer, [PartSpec(WHOLE, 0, out, rank)], lora_alpha=lora_alpha, dropout=0.0,
                             alpha_norm=alpha_norm).to(layer.weight.dtype)
    for p in wrapped.base.parameters():
        p.requires_grad_(False)
    return wrapped


def test_zero_b_gives_the_base_output_exactly():
    """With B at its zero init, the wrapper returns the frozen module's output bit for bit."""
    base = _linear()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    expected = base(x)
    wrapped = _whole(base, 4, "softmax")
    assert torch.equal(wrapped(x), expected)


@pytest.mark.parametrize("alpha_norm", ["none", None])
def test_all_gates_one_equal_base_plus_dense_update(alpha_norm):
    """Gates of one (or plain LoRA) give W x + b + scale * B A x, with the update built densely."""
    wrapped = _whole(_linear(), 4, alpha_norm)
    _randomise(wrapped)
    part = wrapped.parts[WHOLE]
    if alpha_norm == "none":
        with torch.no_grad():
            part.alpha.fill_(1.0)
    x = torch.randn(7, 6, dtype=torch.float64)
    dense = wrapped.base.weight + part.scale * part.B @ part.A  # (out, in)
    torch.testing.assert_close(wrapped(x), x @ dense.T + wrapped.base.bias, rtol=1e-12, atol=1e-12)


def test_gate_mask_equals_plain_lora_of_that_rank():
    """alpha fixed to a 0/1 mask equals plain LoRA built from the kept components (same overall scale)."""
    base = _linear()
    search = _whole(base, 8, "none", lora_alpha=16.0)
    _randomise(search)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float64)
    keep = mask.bool()
    with torch.no_grad():
        search.parts[WHOLE].alpha.copy_(mask)
    rank = int(mask.sum())
    # plain LoRA scales by lora_alpha / r; the search layer by lora_alpha / k: match the product
    plain = _whole(_linear(), rank, None, lora_alpha=16.0 * rank / 8)
    with torch.no_grad():
        plain.parts[WHOLE].A.copy_(search.parts[WHOLE].A[keep])
        plain.parts[WHOLE].B.copy_(search.parts[WHOLE].B[:, keep])
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(search(x), plain(x), rtol=1e-12, atol=1e-12)


def test_conv1d_equals_linear_on_the_transposed_weight():
    """GPT-2's Conv1D (weight (in, out)) wrapper computes what a Linear wrapper does on Wᵀ."""
    torch.manual_seed(0)
    conv = Conv1D(9, 6).to(torch.float64)  # nf=out, nx=in
    lin = nn.Linear(6, 9).to(torch.float64)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    a, b = _whole(conv, 4, "softmax"), _whole(lin, 4, "softmax")
    _randomise(a, seed=3)
    _randomise(b, seed=3)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)


def _fused_c_attn(d=4, seed=0, rank_q=3, rank_v=5) -> SelectableLoRA:
    torch.manual_seed(seed)
    conv = Conv1D(3 * d, d).to(torch.float64)
    parts = [PartSpec("q", 0, d, rank_q), PartSpec("v", 2 * d, 3 * d, rank_v)]
    wrapped = SelectableLoRA(conv, parts, lora_alpha=8.0, dropout=0.0, alpha_norm="softmax").to(torch.float64)
    _randomise(wrapped, seed=seed + 1)
    return wrapped


def _per_head_qkv(d=4, heads=2, seed=0, rank_q=3, rank_v=5) -> SelectableLoRA:
    """GPT-NeoX's query_key_value: per head h, rows [h*3*hd, (h+1)*3*hd) hold [q | k | v] of that head."""
    torch.manual_seed(seed)
    hd = d // heads
    linear = nn.Linear(d, 3 * d).to(torch.float64)
    parts = [PartSpec("q", 0, hd, rank_q, groups=heads), PartSpec("v", 2 * hd, 3 * hd, rank_v, groups=heads)]
    wrapped = SelectableLoRA(linear, parts, lora_alpha=8.0, dropout=0.0, alpha_norm="softmax").to(torch.float64)
    _randomise(wrapped, seed=seed + 1)
    return wrapped


def _rows(d=4, heads=2) -> dict[str, list[int]]:
    """Brute force: the output rows of q, k and v in the per-head layout."""
    hd = d // heads
    return {p: [h * 3 * hd + i * hd + j for h in range(heads) for j in range(hd)] for i, p in enumerate("qkv")}


def test_per_head_split_changes_only_the_q_and_v_rows_of_every_head():
    """groups=heads: the k rows of every head are bitwise the base output; each part's rows (found by brute
    force) get exactly its dense update, row by row."""
    wrapped, rows = _per_head_qkv(), _rows()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    base_out, out = wrapped.base(x), wrapped(x)
    assert torch.equal(out[..., rows["k"]], base_out[..., rows["k"]])
    for name, part in wrapped.parts.items():
        expected = base_out[..., rows[name]] + x @ part.delta_weight().T
        torch.testing.assert_close(out[..., rows[name]], expected, rtol=1e-12, atol=1e-12)
    wrapped.eval()
    before = wrapped(x)
    wrapped.merge()
    torch.testing.assert_close(wrapped(x), before, rtol=1e-12, atol=1e-12)


def test_per_head_split_refuses_a_slice_outside_its_block():
    """A slice must fit in one block (out / groups rows) and the blocks must divide the output."""
    linear = nn.Linear(4, 12)
    with pytest.raises(ValueError, match="bad LoRA part"):
        SelectableLoRA(linear, [PartSpec("q", 4, 7, 2, groups=2)], lora_alpha=1, dropout=0, alpha_norm=None)
    with pytest.raises(ValueError, match="bad LoRA part"):
        SelectableLoRA(linear, [PartSpec("q", 0, 2, 2, groups=5)], lora_alpha=1, dropout=0, alpha_norm=None)


def test_fused_c_attn_changes_only_q_and_v():
    """The k third of c_attn is bitwise the base output; q and v both move, with their own ranks."""
    d = 4
    wrapped = _fused_c_attn(d)
    x = torch.randn(3, 7, d, dtype=torch.float64)
    base_out, out = wrapped.base(x), wrapped(x)
    assert torch.equal(out[..., d : 2 * d], base_out[..., d : 2 * d])
    assert not torch.allclose(out[..., :d], base_out[..., :d])
    assert not torch.allclose(out[..., 2 * d :], base_out[..., 2 * d :])
    assert wrapped.ranks() == {"q": 3, "v": 5}
    for part in wrapped.parts.values():  # one block adapter over c_attn = each part's dense update on its rows
        [(start, stop, _)] = part.runs
        expected = base_out[..., start:stop] + x @ part.delta_weight().T
        torch.testing.assert_close(out[..., start:stop], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "fused"])
def test_merge_equals_unmerged_and_unmerge_restores(kind):
    """merge() folds the update into the weight (same eval output); unmerge() gives the weight back."""
    if kind == "fused":
        wrapped = _fused_c_attn()
    else:
        wrapped = _whole(_linear(), 4, "sigmoid")
        _randomise(wrapped, seed=5)
    wrapped.eval()
    x = torch.randn(5, wrapped.in_features, dtype=torch.float64)
    before, weight = wrapped(x), wrapped.base.weight.clone()
    wrapped.merge()
    torch.testing.assert_close(wrapped(x), before, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(wrapped.base.weight, weight)
    wrapped.unmerge()
    torch.testing.assert_close(wrapped.base.weight, weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wrapped(x), before, rtol=1e-12, atol=1e-12)


def test_initial_gates_are_neutral():
    """softmax, sparsemax and none start at 1/k per component, sigmoid at 0.5."""
    assert torch.allclose(normalise(initial_alpha(8, "softmax"), "softmax"), torch.full((8,), 1 / 8))
    assert torch.allclose(normalise(initial_alpha(8, "sparsemax"), "sparsemax"), torch.full((8,), 1 / 8))
    assert torch.allclose(normalise(initial_alpha(8, "none"), "none"), torch.full((8,), 1 / 8))
    assert torch.allclose(normalise(initial_alpha(8, "sigmoid"), "sigmoid"), torch.full((8,), 0.5))
    with pytest.raises(ValueError, match="alpha_norm"):
        normalise(torch.zeros(2), "relu")


def test_alpha_receives_a_gradient_once_b_is_nonzero():
    """The gate is on the autograd path: d(out)/d(alpha) is non-zero after B leaves zero."""
    wrapped = _whole(_linear(), 4, "softmax")
    _randomise(wrapped)
    wrapped(torch.randn(3, 6, dtype=torch.float64)).sum().backward()
    assert wrapped.parts[WHOLE].alpha.grad.abs().sum() > 0


def test_bad_parts_are_rejected():
    """Overlapping slices, slices outside the output and rank 0 parts raise at wrap time."""
    conv = Conv1D(12, 4)
    with pytest.raises(ValueError, match="overlap"):
        SelectableLoRA(conv, [PartSpec("q", 0, 5, 2), PartSpec("v", 4, 8, 2)], lora_alpha=1, dropout=0, alpha_norm=None)
    with pytest.raises(ValueError, match="bad LoRA part"):
        SelectableLoRA(conv, [PartSpec("q", 8, 13, 2)], lora_alpha=1, dropout=0, alpha_norm=None)
    with pytest.raises(ValueError, match="bad LoRA part"):
        SelectableLoRA(conv, [PartSpec("q", 0, 4, 0)], lora_alpha=1, dropout=0, alpha_norm=None)
    with pytest.raises(TypeError, match="nn.Linear or transformers Conv1D"):
        SelectableLoRA(nn.Embedding(3, 4), [PartSpec(WHOLE, 0, 4, 1)], lora_alpha=1, dropout=0, alpha_norm=None)


def _simplex_projection(z: torch.Tensor) -> torch.Tensor:
    """argmin_p ||p - z||^2 on the simplex by bisection on tau (sum max(z - tau, 0) = 1): the definition, solved
    independently of sparsemax's sort-based closed form."""
    lo, hi = float(z.min()) - 1.0, float(z.max())
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if float(torch.clamp(z - tau, min=0).sum()) > 1 else (lo, tau)
    return torch.clamp(z - (lo + hi) / 2, min=0)


def test_sparsemax_is_the_projection_onto_the_simplex_with_its_jacobian():
    """On random vectors (some spread wide, so that components hit 0) it equals the bisection projection; its
    autograd Jacobian is identity - 1/|S| on the support S and 0 elsewhere; near-uniform input moves the gates as
    far as alpha (softmax's: 1/k as far)."""
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.3, 3.0):
        for _ in range(20):
            z = scale * torch.randn(8, generator=gen, dtype=torch.float64)
            p = sparsemax(z)
            torch.testing.assert_close(p, _simplex_projection(z), rtol=0, atol=1e-10)
            support = p > 0
            n = int(support.sum())
            jac = torch.autograd.functional.jacobian(sparsemax, z)
            want = (torch.eye(8, dtype=torch.float64) - 1.0 / n) * support[:, None] * support[None, :]
            torch.testing.assert_close(jac, want, rtol=0, atol=1e-12)
    assert (sparsemax(torch.tensor([3.0, 0.0, 0.0, 0.0])) == torch.tensor([1.0, 0.0, 0.0, 0.0])).all()
    nudge = torch.tensor([0.01, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert float(sparsemax(nudge)[0] - 0.25) == pytest.approx(0.0075)  # 0.01 x (1 - 1/4)
    assert float(torch.softmax(nudge, -1)[0] - 0.25) == pytest.approx(0.0075 / 4, rel=0.01)
