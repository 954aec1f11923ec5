"""`python -m autolora.bench`: the step benchmark (bench.steps)."""

from autolora.bench.steps import main

main()
