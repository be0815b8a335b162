"""Leftover temporaries of the atomic writers: found by their names and removed, nothing else."""

import os

from common.io import atomic_write_bytes, remove_stale_temporaries


def test_remove_stale_temporaries_removes_only_the_writers_leftovers(tmp_path):
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    keep = [tmp_path / "a.json", tmp_path / ".hidden", tmp_path / "b.tmp", tmp_path / "c.staged"]
    for p in keep[1:]:
        p.write_bytes(b"x")
    # named as atomic_write_bytes and write_together name their temporaries: what a killed process
    # leaves behind before the rename
    for p in (tmp_path / ".a.json.k3j9x.tmp", tmp_path / f".d.png.{os.getpid()}.staged"):
        p.write_bytes(b"partial")
    remove_stale_temporaries(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    remove_stale_temporaries(tmp_path / "missing")  # no folder: nothing to do
