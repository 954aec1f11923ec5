"""The EVA baseline (Explained Variance Adaptation, Paischer et al. 2024) through peft: LoRA whose A holds the
top right-singular vectors of each target's input activations on a few training batches, and whose ranks
(rho > 1) are redistributed by explained variance while the total stays r x the number of target modules,
the budget of uniform LoRA r. A data-driven rank allocation made once, before training, where AutoLoRA
searches and AdaLoRA prunes while training. It then trains as plain LoRA (B starts at zero).

peft's two steps are kept apart (`svd_state`, then `load`): the SVD runs on one process and its result is
shared, so every data-parallel process builds the same ranks; and a resumed run rebuilds the ranks from its
checkpoint (`placeholder_state`) instead of repeating the SVD.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autolora.engine.batch import LABEL_PAD, Batch, model_inputs
from autolora.errors import ConfigError
from autolora.typecheck import check_types

MAX_PASSES = 20  # passes over the EVA batches before giving up: peft cycles them until the SVD converges
ADAPTER = "default"
A_WEIGHT = f".lora_A.{ADAPTER}.weight"


@dataclass(frozen=True)
class EvaSettings:
    """The `eva` config node (conf/config.yaml)."""

    r: int  # rank budget per module: EVA's total rank is r x modules, the same as uniform LoRA r
    rho: float  # a module may take up to round(r x rho) ranks; 1: no redistribution (r everywhere, EVA's A only)
    tau: float  # an SVD component has converged when two consecutive estimates have this cosine similarity
    n_batches: int  # distinct training batches the SVD sees (cycled until it converges; peft has no cap)
    use_label_mask: bool  # token-level labels (NER, E2E): SVD on labelled positions only (the answer, not the
    # prompt); per-sequence labels (classification) mask nothing. Padding is always left out.
    whiten: bool  # divide each A row by sqrt of its singular value (the EVA paper: helps vision, not text)
    adjust_scaling_factors: bool  # alpha x rank / r per module, so that every module scales by lora_alpha / r

    def __post_init__(self):
        check_types(self, "eva")
        if self.r < 1:
            raise ValueError(f"eva.r must be >= 1, got {self.r}")
        if not 1 <= self.rho <= 1000:  # peft caps larger values by the widest matrix anyway
            raise ValueError(f"eva.rho must lie in [1, 1000], got {self.rho}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"eva.tau must lie in (0, 1], got {self.tau}")
        if self.n_batches < 1:
            raise ValueError(f"eva.n_batches must be >= 1, got {self.n_batches}")

    @property
    def max_rank(self) -> int:
        """The largest rank one module can receive (peft: round(r x rho))."""
        return round(self.r * self.rho)


def wrap(model: nn.Module, patterns: Sequence[str], cfg: EvaSettings, *, lora_alpha: float, dropout: float,
         task_type: str, heads: Sequence[str], fan_in_fan_out: bool) -> nn.Module:
    """A peft LoRA model of rank eva.r over the target projections, waiting for `load` (a fused c_attn is
    adapted as a whole). Its A are random until then and B zero, so it computes the backbone's function."""
    from peft import EvaConfig, LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=list(patterns),
        modules_to_save=list(heads) or None, task_type=task_type, fan_in_fan_out=fan_in_fan_out,
        init_lora_weights="eva", eva_config=EvaConfig(
            rho=cfg.rho, tau=cfg.tau, use_label_mask=cfg.use_label_mask, label_mask_value=LABEL_PAD,
            whiten=cfg.whiten, adjust_scaling_factors=cfg.adjust_scaling_factors))
    with warnings.catch_warnings():  # its advice is for LLM-sized batches: here A is r x in, allocated once
        warnings.filterwarnings("ignore", message="lora with eva initialization used with low_cpu_mem_usage")
        peft_model = get_peft_model(model, config)
    narrowest = min(layer.in_features for _, layer in lora_layers(peft_model))
    if cfg.max_rank > narrowest:
        raise ConfigError(f"eva.r x eva.rho = {cfg.max_rank} exceeds the narrowest target's {narrowest} inputs: "
                          "lower eva.rho or eva.r")
    return peft_model


def lora_layers(peft_model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in the PeftModel, layer) of every LoRA layer, in model order."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)]


def token_positions(batch: Mapping[str, Tensor], peft_config) -> Tensor:
    """(N, 2) indices (row, position) of the tokens whose activations enter the SVD: peft's
    prepare_model_inputs_fn. Our batches carry a 4D mask (models.runtime.four_d_attention_mask), whose last
    query row is the padding mask, causal or not (with right padding)."""
    mask = batch["attention_mask"]
    if mask.dim() == 4:
        mask = mask[:, 0, -1, :]
        keep = mask if mask.dtype == torch.bool else mask == 0  # eager attention's additive mask: 0 = attend
    else:
        keep = mask.bool()
    labels = batch.get("labels")
    if peft_config.eva_config.use_label_mask and labels is not None and labels.shape == keep.shape:
        keep = keep & (labels != peft_config.eva_config.label_mask_value)
    return keep.nonzero()


def svd_state(peft_model: nn.Module, batches: Sequence[Batch], cfg: EvaSettings, *, progress: bool
              ) -> dict[str, Tensor]:
    """peft's EVA SVD over `batches` (dicts of model inputs and labels, as the loaders yield them; labels are
    read for the mask, never passed to the model): {LoRA layer name: A of its new rank (0 rows: removed)},
    on the CPU. Runs without autocast, on the fp32 weights (call it before Job.ready_to_train)."""
    from peft import get_eva_state_dict

    calls = [0]
    limit = 1 + MAX_PASSES * len(batches)  # peft's first call only compares the layers' inputs

    def forward(model: nn.Module, batch: Batch):
        calls[0] += 1
        if calls[0] > limit:
            raise ConfigError(f"EVA's SVD did not converge within {MAX_PASSES} passes over eva.n_batches="
                              f"{len(batches)} batches (eva.tau={cfg.tau:g}): lower eva.tau or raise eva.n_batches")
        return model(**model_inputs(batch))

    state = get_eva_state_dict(peft_model, list(batches), forward_fn=forward, prepare_model_inputs_fn=token_positions,
                               gather_distributed_inputs=False, show_progress_bar=progress)
    return {name: a.detach().cpu() for name, a in state.items()}


def placeholder_state(peft_model: nn.Module, saved_params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ranks of a checkpoint's trainable parameters as an EVA state (zero A of each saved rank, 0 rows for a
    module the checkpoint lacks: EVA removed it), for a resumed run: `load` rebuilds those ranks and the
    training loop then restores every weight from the checkpoint."""
    return {name: torch.zeros(saved_params[name + A_WEIGHT].shape[0] if name + A_WEIGHT in saved_params else 0,
                              layer.in_features) for name, layer in lora_layers(peft_model)}


def load(peft_model: nn.Module, state: Mapping[str, Tensor], cfg: EvaSettings) -> dict[str, int]:
    """Give each LoRA layer its EVA rank and A (peft removes the layers of rank 0), then check what peft built:
    returns final_ranks, which sum to eva.r x the number of target modules (peft hands out exactly that budget:
    the top r x modules explained-variance ratios over all modules, each module holding round(r x rho) >= r)."""
    from peft import initialize_lora_eva_weights

    names = [name for name, _ in lora_layers(peft_model)]
    if set(state) != set(names):
        raise ValueError(f"the EVA state names {sorted(set(state) ^ set(names))[:3]}, not the model's LoRA layers")
    initialize_lora_eva_weights(peft_model, eva_state_dict={name: a.clone() for name, a in state.items()},
                                show_progress_bar=False)
    ranks = final_ranks(peft_model, names)
    inner_prefix = "base_model.model."
    want = {name.removeprefix(inner_prefix): state[name].shape[0] for name in names}
    if ranks != want:
        raise ValueError(f"peft built ranks {ranks}, the EVA state holds {want}")
    if sum(ranks.values()) != cfg.r * len(ranks):
        raise ValueError(f"EVA's ranks sum to {sum(ranks.values())}, not eva.r x {len(ranks)} modules")
    return ranks


def final_ranks(peft_model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Module path (in the base model) -> its LoRA rank, read from lora_A's shape, for each of the LoRA layers
    `names` (PeftModel names) the model had before EVA: 0 where EVA removed the layer (peft puts the plain base
    projection back). Raises if a layer's recorded rank disagrees with its weights."""
    layers = dict(lora_layers(peft_model))
    ranks = {}
    for name in names:
        layer = layers.get(name)
        rank = 0 if layer is None else layer.lora_A[ADAPTER].weight.shape[0]
        if layer is not None and (layer.r[ADAPTER] != rank or layer.lora_B[ADAPTER].weight.shape[1] != rank):
            raise ValueError(f"{name}: peft records rank {layer.r[ADAPTER]}, its factors have rank {rank}")
        ranks[name.removeprefix("base_model.model.")] = rank
    return ranks
