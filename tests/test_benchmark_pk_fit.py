"""benchmarks/pk_fit.py: rows of earlier runs join a summary only when they measured the same
thing (the same protocol on the same version of the model's specification)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import load_script

pk_fit = load_script("benchmarks/pk_fit.py", "pk_fit")
PROTOCOL_ARGS = ["--tune", "300", "--target-accept", "0.7", "--max-depth", "6"]


def _earlier(tmp_path, sha256, args=PROTOCOL_ARGS, name="earlier.csv"):
    path = tmp_path / name
    command = "python benchmarks/pk_fit.py " + " ".join(["--sizes", "50", *args])
    pd.DataFrame(
        {
            "subjects": [50],
            "backend": ["nutpie"],
            "s_per_ess": [0.02],
            "spec_sha256": [sha256],
            "command": [command],
        }
    ).to_csv(path, index=False)
    return path


def _include(path, args=PROTOCOL_ARGS):
    parser = pk_fit.build_parser()
    want = pk_fit.protocol(parser.parse_args(["--sizes", "100", *args]))
    return pk_fit.included_rows([path], parser, want, pk_fit.spec_sha256("pk_2cmt_metab"))


def test_rows_of_the_same_protocol_and_specification_are_included(tmp_path):
    rows = _include(_earlier(tmp_path, pk_fit.spec_sha256("pk_2cmt_metab")))
    assert list(rows["subjects"]) == [50]


def test_rows_fitted_with_another_version_of_the_specification_are_refused(tmp_path):
    path = _earlier(tmp_path, "0" * 64)
    with pytest.raises(SystemExit, match=r"row 2 was fitted with another version of models/"):
        _include(path)
    # rows from before the hash was recorded cannot show which version they fitted
    no_hash = tmp_path / "old.csv"
    pd.read_csv(path).drop(columns="spec_sha256").to_csv(no_hash, index=False)
    with pytest.raises(SystemExit, match=r"spec_sha256 not recorded"):
        _include(no_hash)


def test_rows_of_another_protocol_are_refused(tmp_path):
    path = _earlier(tmp_path, pk_fit.spec_sha256("pk_2cmt_metab"), args=["--tune", "1000"])
    with pytest.raises(SystemExit, match=r"another protocol .*'tune': \(1000, 300\)"):
        _include(path)


def test_refusal_comes_before_any_fit(tmp_path):
    path = _earlier(tmp_path, "0" * 64)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit, match="another version"):
        pk_fit.main(["--sizes", "50", *PROTOCOL_ARGS, "--include", str(path), "--out", str(out)])
    assert not out.exists()
