"""Atomic output writing: an interrupted run never leaves a half-written file.

Every writer goes through :func:`atomic_path`, which yields a temporary path in the target's own
directory and renames it over the target only when the block finishes without an exception.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class OutputError(ValueError):
    """Outputs that must not be written: over an input, twice, or below a file."""


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before anything is written, outputs that would overwrite an input file (the same
    path after resolving links and ``..``, or the same file by another name), that name one file
    twice, or whose folder cannot exist because a file of that name is in the way."""
    ins = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, Path] = {}
    for out in map(Path, outputs):
        target = out.resolve()
        for given in ins:
            same = given.resolve() == target or (
                target.exists() and given.exists() and os.path.samefile(given, target)
            )
            if same:
                raise OutputError(
                    f"{out}: this output would overwrite the input {given}; write the outputs "
                    "to another folder"
                )
        if target in seen:
            raise OutputError(f"{out}: the same file as the output {seen[target]}")
        seen[target] = out
        blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise OutputError(f"{out}: cannot be written: {blocking} is a file, not a folder")


def _umask_mode(base: int) -> int:
    """``base`` less the process umask: the mode a plain open() or mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``target`` (same filesystem).

    The file gets the permissions of a plain write (0666 less the umask), not the 0600 of
    the private temporary file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _umask_mode(0o666))
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target``."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


#: Rows formatted and written at a time by :func:`write_csv`.
CSV_CHUNK_ROWS = 500_000


def write_csv(target: str | Path, frame: pd.DataFrame, float_format: str = "%.6g") -> None:
    """Write a table with a fixed float format, so equal numbers give equal bytes.

    The bytes are pandas' ``to_csv(float_format=..., na_rep=".")``'s. Tables of float, integer,
    boolean and object columns are formatted here, ``CSV_CHUNK_ROWS`` rows at a time and each
    distinct value once, which on large tables is many times faster than pandas' per-value
    formatting; other column types go through pandas.
    """
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        frame.iloc[:0].to_csv(fh, index=False, lineterminator="\n")  # the header
        for start in range(0, len(frame), CSV_CHUNK_ROWS):
            chunk = frame.iloc[start : start + CSV_CHUNK_ROWS]
            columns = _csv_text(chunk, float_format)
            if columns is None:
                chunk.to_csv(
                    fh,
                    index=False,
                    header=False,
                    float_format=float_format,
                    na_rep=".",
                    lineterminator="\n",
                )
            else:
                fh.writelines(f"{line}\n" for line in map(",".join, zip(*columns, strict=True)))


def _csv_text(frame: pd.DataFrame, float_format: str, na_rep: str = ".") -> list[np.ndarray] | None:
    """Each column of ``frame`` as the text ``to_csv`` writes for it, or None when a column's
    type is not one handled here. Floats are ``float_format % value``, other values ``str``,
    missing values ``na_rep``; text that needs it is quoted as the csv module quotes."""
    columns = []
    for i, dtype in enumerate(frame.dtypes):
        values = np.ascontiguousarray(frame.iloc[:, i].to_numpy())
        if dtype == np.float64:
            # Distinct bit patterns, so that -0.0 keeps its sign; NaN is masked below.
            codes, distinct = pd.factorize(values.view(np.int64))
            text = [float_format % v for v in distinct.view(np.float64)]
            codes[np.isnan(values)] = len(distinct)
        elif dtype.kind in "iub" and isinstance(dtype, np.dtype):
            codes, distinct = pd.factorize(values)
            text = [str(v) for v in distinct]
        elif dtype.kind == "O":
            codes, distinct = pd.factorize(values)  # NaN and None: code -1
            if not all(isinstance(v, str) for v in distinct):
                return None  # 1, 1.0 and True would share a code but not a text
            text = [_quoted(v) for v in distinct]
        else:
            return None
        columns.append(np.array([*text, na_rep], dtype=object)[codes])
    return columns


def _quoted(value: str) -> str:
    """``value`` as pandas' csv writer writes one field among others (minimal quoting)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["", value])
    return buffer.getvalue()[1:-1]


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_csv` ('.' is a missing value)."""
    return pd.read_csv(path, na_values=["."])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_figure(target: str | Path, fig, dpi: int = 120) -> None:
    """Save a matplotlib Figure atomically (format from the target's suffix)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format=target.suffix.lstrip(".") or "png")


__all__ = [
    "CSV_CHUNK_ROWS",
    "OutputError",
    "atomic_dir",
    "atomic_path",
    "check_outputs",
    "read_csv",
    "write_csv",
    "write_figure",
    "write_json",
    "write_text",
]
