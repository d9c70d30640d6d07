"""Atomic writes: an interrupted write leaves neither a half-written file nor a temporary."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from ketamine_pmx.io import (
    OutputError,
    atomic_dir,
    atomic_path,
    check_outputs,
    write_csv,
    write_json,
)


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


def test_outputs_that_would_overwrite_an_input_are_refused(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("ID\n1\n")
    (tmp_path / "link.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for out in (data, tmp_path / "sub" / ".." / "data.csv", tmp_path / "link.csv"):
        with pytest.raises(OutputError, match="would overwrite the input"):
            check_outputs([tmp_path / "ok.json", out], [data])
    with pytest.raises(OutputError, match="would overwrite the input"):
        check_outputs([tmp_path / "hard.csv"], [data])
    with pytest.raises(OutputError, match="the same file as the output"):
        check_outputs([tmp_path / "a.csv", tmp_path / "." / "a.csv"])
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_outputs([data / "out" / "clean.csv"], [])
    check_outputs([tmp_path / "out" / "clean.csv", tmp_path / "out" / "summary.json"], [data])
    assert data.read_text() == "ID\n1\n"


def test_csv_bytes_are_pandas_bytes_for_every_column_type(tmp_path, monkeypatch):
    """write_csv formats columns itself (fast on large tables) but writes what pandas writes."""
    import io

    import ketamine_pmx.io as kio

    n = 10
    frame = pd.DataFrame(
        {
            "x": [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-300, 1 / 3, 1.2345678901e11, -5e-7, 2.0],
            "n": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9, 10], dtype="Int64"),
            "f32": np.arange(n, dtype=np.float32) / 3,
            "s": ["x,y", 'q"', None, "", ".", " lead", "new\nline", "é", np.nan, "cr\r"],
            "i": np.arange(n) - 3,
            "b": np.arange(n) % 2 == 0,
            "o": pd.Series([1, 1.0, True, "1", None, 2.5, "x", 3, 4, 5], dtype=object),
        }
    )
    frames = [frame, frame[["s", "i", "b"]].assign(y=np.linspace(0, 1, n)), frame.iloc[:0]]
    for rows in (3, 500_000):
        monkeypatch.setattr(kio, "CSV_CHUNK_ROWS", rows)
        for table in frames:
            for fmt in ("%.10g", "%.4g"):
                write_csv(tmp_path / "ours.csv", table, float_format=fmt)
                expected = io.StringIO()
                table.to_csv(
                    expected, index=False, float_format=fmt, na_rep=".", lineterminator="\n"
                )
                assert (tmp_path / "ours.csv").read_bytes() == expected.getvalue().encode()
