"""`python -m autolora.bundle OUT`: one folder an air-gapped GPU node installs autolora from (build.py)."""
