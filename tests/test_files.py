"""Crash-safe writes (clarion.files)."""

import os

import pytest

from clarion.files import atomic_write, atomic_write_text, sha256


def test_atomic_write_replaces_the_file_and_keeps_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0o600
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temp file left


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, lambda tmp: tmp.write_bytes(b"old"))

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert sha256(path) == "cba06b5736faf67e54b07b561eae94395e774c517a7d910a54369e1263ccfbd4"
