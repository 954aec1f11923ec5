"""Quiet by default: the libraries' load reports, their progress bars and known warnings stay off unless
`verbose=true`. What W&B copies into its output.log is then the run's own output only."""

from __future__ import annotations

import logging
import warnings

# (category, message regex) of warnings that say nothing about this run's inputs
KNOWN_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),  # peft asks transformers 5 the old name
)


def silence_libraries(verbose: bool) -> None:
    """Library logging to errors only and library progress bars off (verbose=False), or everything on."""
    import datasets
    import huggingface_hub.utils
    import transformers

    # matplotlib (the ranks figure) logs at INFO when it first builds its font cache, and Hydra's job logging
    # prints INFO records of every logger on the console.
    logging.getLogger("matplotlib").setLevel(logging.NOTSET if verbose else logging.WARNING)
    if verbose:
        transformers.utils.logging.set_verbosity_info()
        transformers.utils.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
        return
    transformers.utils.logging.set_verbosity_error()  # load reports ("MISSING ... newly initialized"), flags
    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()  # tokenising is quick; our own bars show the long work
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
