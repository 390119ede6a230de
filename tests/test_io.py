import os
import stat

import numpy as np
import pytest

from normlens.io import atomic_path, read_json, write_json, write_npz


def test_atomic_writes_have_umask_permissions_and_leave_no_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float64(2.0)})
        write_npz(tmp_path / "b.npz", a=np.arange(3))
    finally:
        os.umask(old)
    for name in ("a.json", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]
    data = read_json(path)
    assert np.isnan(data["x"]) and data["y"] == 2.0


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "c.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.txt"]
