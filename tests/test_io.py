"""Atomic writes: an interrupted write leaves neither a half-written file nor a temporary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ketamine_pmx.io import atomic_path, write_csv, write_json


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
