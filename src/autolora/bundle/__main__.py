"""`python -m autolora.bundle OUT ...` (bundle.build)."""

from autolora.bundle.build import main

main()
