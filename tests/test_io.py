"""Atomic writes: an interrupted write leaves neither a half-written file nor a temporary."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from ketamine_pmx.io import atomic_dir, atomic_path, write_csv, write_json


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a table")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"version": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"version": 1}


def test_csv_bytes_are_deterministic(tmp_path):
    frame = pd.DataFrame({"a": [1.0 / 3.0, np.nan], "b": ["x", "y"]})
    write_csv(tmp_path / "1.csv", frame)
    write_csv(tmp_path / "2.csv", frame.copy())
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()
    assert (tmp_path / "1.csv").read_text() == "a,b\n0.333333,x\n.,y\n"


def test_json_handles_numpy_values(tmp_path):
    write_json(tmp_path / "x.json", {"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(2)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"n": 3, "x": 0.5, "v": [0, 1]}


def test_written_files_get_the_umask_permissions_not_the_temporary_file_s(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
