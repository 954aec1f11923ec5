"""The run-folder rules in-process: what a command may do with a folder, the lock, the data fingerprint."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from autolora.errors import ConfigError
from autolora.runner import run_folder as runfolder
from autolora.runner.run_folder import Plan, RunLock, check_same_data, claim, plan

CONFIG = {"seed": 0, "search": {"k": 8}, "resume": False}


def own_run(folder, config=CONFIG, finished=False, data=None):
    """A folder as this program leaves it: marker (with a data fingerprint), config.yaml, maybe metrics.json."""
    import yaml

    folder.mkdir(parents=True)
    (folder / runfolder.MARKER).write_text(json.dumps({"created": "x", "data": data or {}}))
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder


def test_a_new_run_takes_only_a_new_or_empty_folder(tmp_path):
    """New runs start in an absent or empty folder (a lock file alone counts as empty); a folder holding any
    file, ours or someone's, is refused with what it holds."""
    assert plan(tmp_path / "absent", CONFIG, resume=False) == Plan("new", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / runfolder.LOCK).write_text("")
    assert plan(tmp_path / "empty", CONFIG, resume=False).action == "new"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "ranks.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"foreign is not empty \(ranks.json\) and is not a run of autolora-run"):
        plan(foreign, CONFIG, resume=False)
    with pytest.raises(ConfigError, match="already holds an unfinished run"):
        plan(own_run(tmp_path / "mine"), CONFIG, resume=False)


def test_resume_continues_only_its_own_unfinished_run_with_the_same_config(tmp_path):
    """resume=true: a marked, unfinished run with the same config (resume/progress aside) resumes; a folder
    without the marker, a finished run or another config are refused; in a sweep a finished point is skipped
    and a point never started is started."""
    mine = own_run(tmp_path / "mine")
    assert plan(mine, {**CONFIG, "resume": True}, resume=True) == Plan("resume", mine)
    with pytest.raises(ConfigError, match=r"differs from the run .* \['search.k'\]"):
        plan(mine, {**CONFIG, "search": {"k": 4}}, resume=True)
    copied = tmp_path / "copied"  # cp -r mine/* copied/: everything but the dot file
    copied.mkdir()
    (copied / "config.yaml").write_text((mine / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="not a run of autolora-run"):
        plan(copied, CONFIG, resume=True)
    done = own_run(tmp_path / "done", finished=True)
    with pytest.raises(ConfigError, match="finished run"):
        plan(done, CONFIG, resume=True)
    assert plan(done, CONFIG, resume=True, sweep=True).action == "skip"
    assert plan(tmp_path / "never", CONFIG, resume=True, sweep=True).action == "new"
    with pytest.raises(ConfigError, match="holds no run to resume"):
        plan(tmp_path / "never", CONFIG, resume=True)


def test_a_garbage_config_is_one_error_and_skipped_among_siblings(tmp_path):
    """A run folder whose config.yaml is garbage: resuming it names the file; looking for the newest unfinished
    sibling passes over it."""
    broken = own_run(tmp_path / "runs" / "broken")
    (broken / "config.yaml").write_bytes(b"\xff\xfe: [")
    with pytest.raises(ConfigError, match="config.yaml cannot be read as a config"):
        plan(broken, CONFIG, resume=True)
    assert runfolder.newest_unfinished(tmp_path / "runs", CONFIG) is None
    good = own_run(tmp_path / "runs" / "good")
    assert runfolder.newest_unfinished(tmp_path / "runs", CONFIG) == good


def test_unwritable_places_are_refused_before_anything_is_made(tmp_path):
    """A run folder that is a file, inside a file or in a folder without write permission."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        runfolder.check_writable(a_file)
    with pytest.raises(ConfigError, match="a_file is a file, not a folder"):
        runfolder.check_writable(a_file / "deeper" / "run")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="cannot write in .*locked"):
            runfolder.check_writable(locked / "run")


def test_the_lock_admits_one_process_and_a_dead_holder_leaves_no_stale_lock(tmp_path):
    """While one holder has the folder, a second is refused with the holder's pid; once it is released, or
    when the file only names a process that has died, the folder can be taken."""
    first = RunLock(tmp_path).acquire()
    with pytest.raises(ConfigError, match=rf"in use by another run \(host .* pid {os.getpid()} since"):
        RunLock(tmp_path).acquire()
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runfolder.LOCK).write_text(f"host x pid {dead.stdout.strip()} since then\n")  # left by a SIGKILL
    RunLock(tmp_path).acquire().release()


def test_without_flock_a_live_holder_is_detected_by_pid(tmp_path, monkeypatch):
    """On a file system without flock the pid in the lock file decides: a live process on this host keeps the
    folder, a dead one's lock is taken over."""
    import socket

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(runfolder.fcntl, "flock", no_flock)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / runfolder.LOCK).write_text(f"host {socket.gethostname()} pid {holder.pid} since now\n")
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()  # the holder is dead now


def test_claim_writes_the_marker_and_first_files_and_a_resume_refuses_changed_data(tmp_path):
    """A new run's claim records the data fingerprint; resuming with other data is refused, naming the file."""
    folder = tmp_path / "run"
    lock = claim(Plan("new", folder), {"/data/train.tsv": "aa", "/data/dev.tsv": "bb"}, {"config.yaml": "seed: 0\n"})
    lock.release()
    assert json.loads((folder / runfolder.MARKER).read_text())["data"] == {"/data/train.tsv": "aa",
                                                                           "/data/dev.tsv": "bb"}
    assert (folder / "config.yaml").read_text() == "seed: 0\n"
    claim(Plan("resume", folder), {"/data/train.tsv": "aa", "/data/dev.tsv": "bb"}, {}).release()
    with pytest.raises(ConfigError, match=r"data changed since the run started: /data/train.tsv changed"):
        claim(Plan("resume", folder), {"/data/train.tsv": "XX", "/data/dev.tsv": "bb"}, {})
    with pytest.raises(ConfigError, match="/data/dev.tsv is no longer read"):
        check_same_data(folder, {"/data/train.tsv": "aa"})
    RunLock(folder).acquire().release()  # a refused claim released the lock


def test_a_second_claim_of_the_same_new_folder_loses(tmp_path):
    """Two new runs planned into the same empty folder: the second to claim it finds the first's files."""
    folder = tmp_path / "run"
    claim(Plan("new", folder), {}, {"config.yaml": "a: 1\n"}).release()
    with pytest.raises(ConfigError, match="already holds an unfinished run"):
        claim(Plan("new", folder), {}, {"config.yaml": "a: 2\n"})
    assert (folder / "config.yaml").read_text() == "a: 1\n"


def test_a_record_logged_before_the_claim_waits_for_it(tmp_path, monkeypatch, capsys):
    """A library record logged after Hydra starts but before the run claims its folder (under CI=1
    transformers hands its load reports to the root logger) must not create autolora.log in the new folder, which
    would then make the run refuse its own folder as 'not empty'; the record reaches autolora.log after the claim."""
    import logging

    from autolora.cli.main import main
    from autolora.runner import pipeline

    load_inputs = pipeline.load_inputs

    def load_inputs_logging_first(*args, **kwargs):
        logging.getLogger("some.library").warning("a record from before the claim")
        return load_inputs(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_inputs", load_inputs_logging_first)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["autolora-run", "debug=tiny", "logger=none", "progress=false",
                                      f"hydra.run.dir={run_dir}"])
    main()
    assert "error" not in capsys.readouterr().err
    log = (run_dir / "autolora.log").read_text()
    assert "a record from before the claim" in log and (run_dir / "metrics.json").is_file()


def test_hydra_default_job_logging_opens_its_file_at_job_start_and_the_run_still_takes_its_folder(tmp_path, monkeypatch,
                                                                                               capsys):
    """hydra/job_logging=default (or a user's own logging config) creates autolora.log as the job starts, before the
    run checks its folder: that file is this job's, not a stranger's, and must not make the run refuse the folder;
    a autolora.log that was there before the command still is refused."""
    from autolora.cli.main import main

    run_dir = tmp_path / "run"
    command = ["autolora-run", "debug=tiny", "logger=none", "progress=false", "hydra/job_logging=default",
               f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", command)
    main()
    assert ("error" not in capsys.readouterr().err and (run_dir / "metrics.json").is_file()
            and (run_dir / "autolora.log").is_file())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "autolora.log").write_text("someone else's\n")
    monkeypatch.setattr(sys, "argv", [*command[:-1], f"hydra.run.dir={foreign}"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2 and "is not empty (autolora.log)" in capsys.readouterr().err
    assert os.listdir(foreign) == ["autolora.log"] and (foreign / "autolora.log").read_text() == "someone else's\n"
