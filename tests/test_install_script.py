"""
The shell that activates uploaded files, run for real in sh on temporary files: a staged
file that fails validation never becomes active, and the live file is left as it was.
The containerd case uses the real containerd binary (installed by `make deps`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import containerd
from tasks.engine.desired import text_file
from tasks.engine.ops import install_script, staged_path
from tasks.settings import parse_host_settings


def stage(tmp_path: Path, name: str, live: str | None, new: str):
    """A live file (or none) and its staged replacement, as files_installed leaves them after the upload."""
    path = tmp_path / name
    if live is not None:
        path.write_text(live)
    Path(staged_path(str(path))).write_text(new)
    return text_file(str(path), new)


def run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def test_every_staged_file_is_activated_with_its_mode_and_digest_recorded(tmp_path):
    files = [stage(tmp_path, "a.conf", "old\n", "new a\n"), stage(tmp_path, "b.conf", None, "new b\n")]
    cache = tmp_path / "state" / "digests"
    result = run(install_script(files, digest_cache=str(cache)))
    assert result.returncode == 0, result.stderr
    for f in files:
        path = Path(f.path)
        assert path.read_bytes() == f.content
        assert oct(path.stat().st_mode & 0o777) == "0o644"
        assert not Path(staged_path(f.path)).exists()
    recorded = [line.split(" ", 2) for line in cache.read_text().splitlines()]
    for (key, sha256, path), f in zip(recorded, files):
        status = os.stat(f.path)
        assert key.split(":")[:2] == [str(status.st_ino), str(status.st_size)]
        assert (sha256, path) == (hashlib.sha256(f.content).hexdigest(), f.path)


def test_a_staged_file_with_another_sum_is_removed_and_the_live_file_stays(tmp_path):
    """What arrived on the node is hashed there before it is activated (an upload corrupted on the way,
    or a staged file changed on the node): nothing of the batch becomes active."""
    files = [stage(tmp_path, "a.conf", "old a\n", "new a\n"), stage(tmp_path, "bridge", "old bridge\n", "new bridge\n")]
    evil = b"EVIL bridge\n"
    Path(staged_path(files[1].path)).write_bytes(evil)  # changed on the node after the upload
    cache = tmp_path / "state" / "digests"
    result = run(install_script(files, digest_cache=str(cache), host_name="node-2"))
    assert result.returncode == 1
    assert result.stderr == (f"podnet: node-2: {files[1].path}: the uploaded file has sha256 "
                             f"{hashlib.sha256(evil).hexdigest()} on the node, expected {files[1].sha256}; "
                             "removed it, the live file is unchanged\n")
    assert [Path(f.path).read_text() for f in files] == ["old a\n", "old bridge\n"]
    assert [Path(staged_path(f.path)).exists() for f in files] == [False, False]
    assert not cache.exists()  # nothing recorded: the next probe hashes the live files


def test_a_staged_file_that_is_gone_stops_before_anything_is_activated(tmp_path):
    files = [stage(tmp_path, "a.conf", "old a\n", "new a\n"), stage(tmp_path, "b.conf", "old b\n", "new b\n")]
    Path(staged_path(files[1].path)).unlink()
    result = run(install_script(files, digest_cache=str(tmp_path / "digests"), host_name="node-2"))
    assert result.returncode != 0
    assert [Path(f.path).read_text() for f in files] == ["old a\n", "old b\n"]


def test_the_digest_recorded_is_the_one_the_node_computed(tmp_path):
    files = [stage(tmp_path, "a.conf", None, "new a\n")]
    script = install_script(files, digest_cache=str(tmp_path / "digests"))
    record = script[script.index("mkdir -p"):]
    assert files[0].sha256 not in record and '"$d0"' in record  # not the desired sum: the node's own
    assert run(script).returncode == 0
    assert (tmp_path / "digests").read_text().split()[1] == hashlib.sha256(b"new a\n").hexdigest()


def test_a_rejected_file_never_becomes_active(tmp_path):
    files = [stage(tmp_path, "config.toml", "live = true\n", "broken")]
    result = run(install_script(files, validate="grep -q '=' {path}", digest_cache=str(tmp_path / "digests")))
    assert result.returncode == 1
    assert f"podnet: {files[0].path}: rejected by validation, live file left unchanged" in result.stderr
    assert Path(files[0].path).read_text() == "live = true\n"
    assert not Path(staged_path(files[0].path)).exists()
    assert not (tmp_path / "digests").exists()


def test_a_unit_to_restart_is_marked_before_its_files_become_active(tmp_path):
    pending = tmp_path / "restart-pending"
    files = [stage(tmp_path, "config.toml", "old = 1\n", "new = 2\n")]
    script = install_script(files, digest_cache=str(tmp_path / "digests"), restarts="containerd.service",
                            pending_dir=str(pending))
    assert script.index(f": > {pending}/containerd.service") < script.index("mv -f")  # a kill in between: marked
    assert run(script).returncode == 0
    assert (pending / "containerd.service").exists() and Path(files[0].path).read_text() == "new = 2\n"
    rejected = [stage(tmp_path, "other.toml", "old = 1\n", "broken")]
    assert run(install_script(rejected, validate="grep -q '=' {path}", digest_cache=str(tmp_path / "digests"),
                              restarts="other.service", pending_dir=str(pending))).returncode == 1
    assert not (pending / "other.service").exists()  # nothing activated: nothing to restart


@pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is installed by `make deps`")
@pytest.mark.parametrize("version", ["1.6.20", "1.7.34"])
def test_containerd_itself_rejects_a_broken_config_and_accepts_the_rendered_one(tmp_path, version):
    """Debian's containerd 1.6 checks the config: rendered (valid) and broken (invalid) TOML."""
    settings = parse_host_settings({"containerd_version": version}, "node", [])
    check = containerd.validate_command(settings, shutil.which("containerd"))
    rendered = containerd.render_config(settings)
    good = [stage(tmp_path, "good.toml", "# live\n", rendered)]
    assert run(install_script(good, validate=check, digest_cache=str(tmp_path / "d1"))).returncode == 0
    assert Path(good[0].path).read_text() == rendered
    bad = [stage(tmp_path, "bad.toml", "# live\n", rendered.replace("restrict_oom_score_adj = false",
                                                                       'restrict_oom_score_adj = "no"'))]
    result = run(install_script(bad, validate=check, digest_cache=str(tmp_path / "d2")))
    assert result.returncode == 1
    assert "Can't convert" in result.stderr
    assert Path(bad[0].path).read_text() == "# live\n"
