"""Crash-safe writes (clarion.files)."""

import os

import pytest

from clarion.files import atomic_dir, atomic_write, atomic_write_text, check_replaceable, sha256


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


# --- permissions: every writer gives what a plain open()/mkdir() would -------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_dir_replaces_a_folder_with_normal_permissions(tmp_path, umask_022):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _mode(target) == 0o755  # not mkdtemp's private 0o700
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or .old folder left
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir_keep_leaves_the_first_folder(tmp_path, umask_022):
    target = tmp_path / "extracted"
    with atomic_dir(target, exists="keep") as tmp:
        (tmp / "first").write_text("1")
    with atomic_dir(target, exists="keep") as tmp:  # another process got there first
        (tmp / "second").write_text("2")
    assert [p.name for p in target.iterdir()] == ["first"] and len(list(tmp_path.iterdir())) == 1


def test_clip_cache_entries_are_readable_by_others(tmp_path, umask_022):
    import numpy as np
    import soundfile as sf

    from clarion.audio import ClipCache

    clip = tmp_path / "a.wav"
    sf.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    cache = ClipCache(tmp_path / "cache", 16000)
    cache.load(clip)
    entry = cache.entry(clip)
    assert entry.is_file() and _mode(entry) == 0o644
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp file left


def test_shards_and_their_index_are_readable_by_others(tmp_path, umask_022):
    from conftest import write_tone_split

    from clarion.data.shards.writer import write_shards

    manifest = write_tone_split(tmp_path / "data", "train", 4, 0)
    out = tmp_path / "shards"
    write_shards(manifest, out, max_samples_per_shard=2)
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["shard-000000.tar", "shard-000001.tar", "shards.json"]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_writers_follow_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
        with atomic_dir(tmp_path / "private") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "private.txt") == 0o600 and _mode(tmp_path / "private") == 0o700


def test_check_replaceable_refuses_a_non_empty_folder_without_overwrite_and_a_foreign_one_with_it(tmp_path):
    class Refused(Exception):
        pass

    check_replaceable(tmp_path / "missing", "config.yaml", "a model", False, Refused)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "config.yaml", "a model", False, Refused)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    (ours / "config.yaml").write_text("x")
    (theirs / "notes.txt").write_text("x")
    with pytest.raises(Refused, match="exists and is not empty"):
        check_replaceable(ours, "config.yaml", "a model", False, Refused)
    check_replaceable(ours, "config.yaml", "a model", True, Refused)
    with pytest.raises(Refused, match="is not a model; refusing to replace it"):
        check_replaceable(theirs, "config.yaml", "a model", True, Refused)
