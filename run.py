"""The Hydra entrypoint from a checkout: `python run.py task=glue/rte ...` (same as `autolora-run`)."""

from autolora.run import main

if __name__ == "__main__":
    main()
