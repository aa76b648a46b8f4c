import pytest

from incentivize.atomic import atomic_directory


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_replace_or_keep(tmp_path):
    target = tmp_path / "model"
    for text, replace in [("first", True), ("second", True), ("third", False)]:
        with atomic_directory(target, replace=replace) as tmp:
            (tmp / "f").write_text(text)
    assert (target / "f").read_text() == "second"


def test_a_write_error_reported_only_when_flushing_fails_the_block(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    real_fsync = os.fsync

    def full(fd):
        if os.path.isfile(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
