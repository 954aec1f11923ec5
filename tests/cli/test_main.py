"""cli.main in-process (tests, notebooks): Hydra's job logging is the job's alone, so one main() leaves
nothing behind that a later one, or later code, would log through."""

from __future__ import annotations

import logging
import sys


def test_main_gives_the_root_logger_back_as_it_found_it(tmp_path, monkeypatch):
    """After a run, the root logger has its handlers and level of before, and what is logged afterwards goes
    neither to the run's console stream nor into its autolora.log (the handlers Hydra added are closed)."""
    from autolora.cli.main import main
    from autolora.runner import pipeline

    def silence_and_log(verbose: bool) -> None:  # a record logged inside the run opens its log file
        original(verbose)
        logging.getLogger("autolora.test").warning("logged inside the run")

    original = pipeline.silence_libraries
    monkeypatch.setattr(pipeline, "silence_libraries", silence_and_log)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["autolora-run", "debug=tiny", "method=lora", "hydra.run.dir=run"])
    main()
    assert (root.level, root.handlers) == before
    log_file = tmp_path / "run" / "autolora.log"
    written = log_file.read_text()
    assert "logged inside the run" in written
    logging.getLogger("autolora.after").warning("logged after the run")
    assert log_file.read_text() == written
