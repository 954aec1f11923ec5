"""Every check that needs only the config, the folder and the data files, made before the run folder is
claimed and before a model loads: the data rows, the tokenizer, the architecture's targets and the ranks
file (read here once per run)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from autolora.engine.distributed import World
from autolora.errors import ConfigError, DataError, RankKeyError
from autolora.method import ranks as ranks_io
from autolora.method.inject import check_rank_keys
from autolora.models.backbone import HEAD_CLASSES, architecture, check_weights, load_tokenizer
from autolora.models.targets import target_widths
from autolora.runner.run_config import Settings
from autolora.tasks.base import select_on_heldout


@dataclass(frozen=True)
class Inputs:
    """What the preflight read: the data splits, the tokenizer and search.ranks_file's ranks (or None)."""

    splits: object  # tasks.base.Splits
    tokenizer: object
    given_ranks: Mapping[str, int] | None


def read_ranks_file(settings: Settings) -> Mapping[str, int] | None:
    """search.ranks_file's ranks (those of search.ranks_readout when set), checked (ranks.load), for an AutoLoRA
    run that retrains at them; else None."""
    if settings.method != "autolora" or settings.search.ranks_file is None:
        return None
    return ranks_io.load(settings.search.ranks_file, max_rank=settings.search.k,
                         readout=settings.search.ranks_readout)["ranks"]


def load_splits(settings: Settings, task):
    """The data splits as the run reads them (data.select_on's held-out part included): all that a resumed sweep
    needs to fingerprint a finished point it skips, without the tokenizer and the architecture checks."""
    return select_on_heldout(task.load(settings.data), settings.data)


def load_inputs(settings: Settings, task, splits=None) -> Inputs:
    """The splits (`splits`, if load_splits read them already), the tokenizer (checked against task.max_length),
    the model's architecture and a ranks file against it. Everything here runs before the run folder is claimed
    and a model loads."""
    splits = load_splits(settings, task) if splits is None else splits
    check_labels(splits)
    try:
        tokenizer = load_tokenizer(settings.model, split_words=task.head == "token_classification")
    except OSError as err:
        if err.errno is not None:  # a file-system error, not transformers' "cannot find/connect" (errno None)
            raise
        where = settings.model.tokenizer or settings.model.path
        raise ConfigError(f"tokenizer of model {settings.model.name} ({where}): {str(err).splitlines()[0]}") from None
    minimum = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if task.max_length < minimum:
        raise ConfigError(f"task.max_length={task.max_length} is too small for {task.name} with this tokenizer "
                          f"(at least {minimum}: its special tokens plus two text tokens)")
    given = read_ranks_file(settings)
    check_architecture(settings, task, given, len(tokenizer))
    return Inputs(splits, tokenizer, given)


def check_architecture(settings: Settings, task, given_ranks: Mapping[str, int] | None,
                       tokens: int | None = None) -> None:
    """The model, built from its config on the meta device (no weights, no memory), has the matrices the model
    config targets, and a ranks file names exactly those: a model.path of another architecture, or a ranks
    file of another model, is refused before the run folder is claimed. Its weight files open, its embeddings
    cover the tokenizer's `tokens` ids, and its positions task.max_length."""
    cfg = settings.model
    if cfg.gguf_file:  # its config is read from the whole GGUF file (seconds); the packaged GGUF models match
        return
    where = f"model.path={cfg.path}" if cfg.path else f"model {cfg.name} (random init)"
    config = architecture(cfg)  # no weights; a path that holds no model is one line (FileNotFoundError)
    try:
        check_weights(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    vocab = getattr(config, "vocab_size", None)
    if tokens is not None and isinstance(vocab, int) and tokens > vocab:  # an id past the table: IndexError
        raise ConfigError(f"the tokenizer of {where} has {tokens} tokens but its embeddings hold {vocab} "
                          "(vocab_size): the tokenizer belongs to another model")
    check_positions(config, task.max_length, where)
    if task.head != "causal_lm":
        config.num_labels = task.num_labels
    try:
        with torch.device("meta"):
            skeleton = HEAD_CLASSES[task.head].from_config(config)
    except (OSError, ValueError, KeyError) as err:  # unreachable hub id, unknown model_type, ...
        raise ConfigError(f"{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    try:
        widths = target_widths(skeleton, cfg.targets)
    except ValueError as err:
        raise ConfigError(f"{err}: {where} is a {config.model_type} model, which model={cfg.name} does not "
                          "describe; choose the model config of that architecture (model=...)") from None
    check_rank_widths(settings, widths, given_ranks)


# Architectures whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# of max_position_embeddings rows, pad_token_id + 1 are never a token's position (514 -> 512 for RoBERTa).
PADDING_OFFSET = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "ibert")


# a config naming any of these computes rotary position embeddings (transformers 5: rope_parameters; 4.x:
# rope_theta, rope_scaling; GPT-NeoX: rotary_pct, rotary_emb_base)
ROTARY_KEYS = ("rope_parameters", "rope_theta", "rope_scaling", "rotary_pct", "rotary_dim", "rotary_emb_base")


def check_positions(config, max_length: int, where: str) -> None:
    """task.max_length fits the model's position embeddings: a longer row indexes past the table (an index
    error in the middle of training, or on the GPU a device-side assert). Relative positions (DeBERTa-v2
    without position_biased_input) and rotary ones (Llama, Qwen2, GPT-NeoX: computed for any position; their
    max_position_embeddings is the trained context, not a table) have no such table."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(positions, int) or getattr(config, "position_biased_input", True) is False:
        return
    if any(getattr(config, key, None) is not None for key in ROTARY_KEYS):
        return
    if config.model_type in PADDING_OFFSET:
        positions -= (config.pad_token_id or 0) + 1
    if max_length > positions:
        raise ConfigError(f"task.max_length={max_length} is above the {positions} positions of {where}: "
                          f"use task.max_length={positions} or less")


def check_rank_widths(settings: Settings, widths: Mapping[str, int], given_ranks: Mapping[str, int] | None) -> None:
    """A ranks file names exactly the model's target matrices, and no rank (search.k, lora.r, a ranks file's)
    exceeds the width of its matrix: components beyond min(in, out) are copies, and a rank of 1e9 would
    only fail as an allocation of terabytes in the middle of the run."""
    narrowest = min(widths, key=widths.get)
    if given_ranks is not None:
        path = settings.search.ranks_file
        try:
            check_rank_keys(list(widths), given_ranks)
        except RankKeyError as err:
            raise RankKeyError(f"search.ranks_file={path}: {err}") from None
        for name, rank in given_ranks.items():
            if rank > widths[name]:
                raise RankKeyError(f"search.ranks_file={path}: ranks[{name!r}] = {rank} is above the matrix's "
                                   f"width min(in, out) = {widths[name]}")
        return
    key, rank = {"autolora": ("search.k", settings.search.k), "lora": ("lora.r", settings.lora_r)}.get(
        settings.method, (None, 0))
    if key is not None and rank > widths[narrowest]:
        raise ConfigError(f"{key}={rank} is above the width min(in, out) = {widths[narrowest]} of matrix "
                          f"{narrowest}: at most {widths[narrowest]} components can be independent there")


def check_labels(splits) -> None:
    """Numeric labels (regression scores) must be finite: a NaN would read as divergence in training and give
    a NaN metric; files are checked line by line when read, this covers data from the hub. A classifier's
    training split must hold two classes at least: on one it learns a constant and scores 1.0 on that class."""
    train = splits.train
    if "labels" in train.column_names and train.features["labels"].dtype.startswith("int"):
        if len(set(train["labels"])) < 2:
            raise DataError(f"{splits.origin}: the training split holds a single class ({len(train)} rows, all "
                            "of one label): a classifier needs two at least")
    for name, split in (("train", splits.train), *splits.scored().items()):
        if "labels" in split.column_names and split.features["labels"].dtype.startswith("float"):
            bad = [i for i, value in enumerate(split["labels"]) if not math.isfinite(value)]
            if bad:
                raise DataError(f"{splits.origin}: {name} row {bad[0] + 1} has a non-finite score "
                                f"({len(bad)} rows in all)")


def distributed_settings(settings: Settings, world: World) -> Settings:
    """This process's device (cuda:LOCAL_RANK or cpu); bars on the main process only; batch sizes that split."""
    from autolora.engine import distributed

    if settings.search.hypergrad == "exact" and settings.method == "autolora":
        raise ConfigError("search.hypergrad=exact runs in one process only (it is the reference for fd)")
    for key, size in (("search.batch_size", settings.search.batch_size),
                      ("search.val_batch_size", settings.search.val_batch_size or settings.search.batch_size),
                      ("retrain.batch_size", settings.retrain.batch_size)):
        try:
            world.per_process(size, key)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not world.is_main:
        os.environ["TQDM_DISABLE"] = "1"  # generation's bar too
    return dataclasses.replace(settings, device=distributed.init(world, settings.device.type),
                               progress=settings.progress and world.is_main)
