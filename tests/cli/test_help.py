"""`autolora-run --help` lists the keys users type, one line each, from conf/hydra/help/autolora.yaml, the
same list as the README's (one source: the help file; this test fails when the README drifts from it)."""

from __future__ import annotations

import contextlib
import re
import sys

import yaml
from conftest import REPO

from autolora.layout import config_dir

HELP = config_dir() / "hydra" / "help" / "autolora.yaml"
OWN_TASKS = ("text_classification", "token_classification", "generation")


def help_keys() -> list[str]:
    """The 'Keys you will type' lines of the help template."""
    template = yaml.safe_load(HELP.read_text())["template"]
    return template.split("Keys you will type:\n", 1)[1].split("\n\n", 1)[0].splitlines()


def test_readme_key_list_is_the_help_list():
    """The README's key block is exactly the help template's list (paste it from conf/hydra/help/autolora.yaml)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- keys:.*?-->\n```text\n(.*?)```", readme, flags=re.S)
    assert block is not None and block.group(1).splitlines() == help_keys()


def test_help_prints_one_line_per_key_users_type(capsys, monkeypatch):
    """--help shows every listed key on its own line with its explanation, and every listed key exists in the
    composed config (or is a config group)."""
    from conftest import compose
    from omegaconf import OmegaConf

    from autolora.cli.main import main

    monkeypatch.setattr(sys, "argv", ["autolora-run", "--help"])
    with contextlib.suppress(SystemExit):
        main()
    out = capsys.readouterr().out
    configs = [compose(f"task={task}", "task.train_file=x") for task in OWN_TASKS]
    for line in help_keys():
        assert line in out.splitlines(), line
        key = line.split()[0].split("=")[0]
        assert len(line.split(maxsplit=1)) == 2, line  # a key and its explanation
        group = (config_dir() / key).is_dir()
        assert group or any(OmegaConf.select(c, key, default="?") != "?" for c in configs), key
