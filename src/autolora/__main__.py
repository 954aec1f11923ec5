"""`python -m autolora ...`: the console script autolora-run (under torchrun: `torchrun ... -m autolora ...`)."""

from autolora.cli.main import main

main()
