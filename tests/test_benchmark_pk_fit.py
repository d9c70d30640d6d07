"""benchmarks/pk_fit.py as a program: rows of earlier runs join a summary only when they
measured the same thing (the same protocol on the same version of the model's specification),
and the summary gives the scaling exponent of those rows with its interval and its factors.

Each test writes rows of earlier runs and runs the script's command line on them
(``--summarise``, or an ``--include`` it refuses), so no test fits a model. The script runs in
this process (``runpy``: arguments in; exit status, output and files out; each run in a new
interpreter would take seconds of imports), and as a separate process where the program's
exit matters.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import runpy
import subprocess
import sys
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from ketamine_pmx.config import load_config
from ketamine_pmx.models import load_pk_spec

SCRIPT = REPO / "benchmarks" / "pk_fit.py"
PROTOCOL_ARGS = ["--tune", "300", "--target-accept", "0.7", "--max-depth", "6"]


@functools.cache
def spec_sha256() -> str:
    """The hash of the default PK model's specification as shipped."""
    return load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml").sha256


def pk_fit(*args) -> tuple[int, str, str]:
    """Run ``python benchmarks/pk_fit.py ARGS`` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = [str(SCRIPT), *map(str, args)]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(out):
        with contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(SCRIPT), run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code
    if isinstance(code, str):  # SystemExit("message"): Python prints it and exits 1
        return 1, out.getvalue(), err.getvalue() + code
    return code or 0, out.getvalue(), err.getvalue()


def recorded_command(args=PROTOCOL_ARGS) -> str:
    return "python benchmarks/pk_fit.py " + " ".join(["--sizes", "50", *args])


def _earlier(tmp_path, sha256, args=PROTOCOL_ARGS, name="earlier.csv"):
    path = tmp_path / name
    pd.DataFrame(
        {
            "subjects": [50],
            "backend": ["nutpie"],
            "s_per_ess": [0.02],
            "spec_sha256": [sha256],
            "command": [recorded_command(args)],
        }
    ).to_csv(path, index=False)
    return path


def summarise(tmp_path, *paths, args=PROTOCOL_ARGS) -> dict:
    """The summary ``--summarise`` writes of the rows in ``paths`` (it writes no table)."""
    out = tmp_path / "sweep.csv"
    code, _out, err = pk_fit(*args, "--summarise", "--include", *paths, "--out", out)
    assert code == 0, err
    assert not out.exists()
    return json.loads((tmp_path / "sweep_summary.json").read_text())


def refusal(tmp_path, path, args=PROTOCOL_ARGS) -> str:
    """The error of ``--summarise`` refusing the rows in ``path``."""
    code, _out, err = pk_fit(*args, "--summarise", "--include", path, "--out", tmp_path / "x.csv")
    assert code == 1, err
    return err


def test_rows_of_the_same_protocol_and_specification_are_included(tmp_path):
    path = _earlier(tmp_path, spec_sha256())
    summary = summarise(tmp_path, path)
    assert summary["included"] == [str(path)]
    assert "nutpie_s_per_ess_exponent" in summary  # the row's backend


def test_rows_fitted_with_another_version_of_the_specification_are_refused(tmp_path):
    path = _earlier(tmp_path, "0" * 64)
    assert "row 2 was fitted with another version of models/" in refusal(tmp_path, path)
    # rows from before the hash was recorded cannot show which version they fitted
    no_hash = tmp_path / "old.csv"
    pd.read_csv(path).drop(columns="spec_sha256").to_csv(no_hash, index=False)
    assert "spec_sha256 not recorded" in refusal(tmp_path, no_hash)


def test_rows_of_another_protocol_are_refused(tmp_path):
    path = _earlier(tmp_path, spec_sha256(), args=["--tune", "1000"])
    assert re.search(r"another protocol .*'tune': \(1000, 300\)", refusal(tmp_path, path))


def test_refusal_comes_before_any_fit(tmp_path):
    path = _earlier(tmp_path, "0" * 64)
    out = tmp_path / "out.csv"
    command = [sys.executable, str(SCRIPT), "--sizes", "50", *PROTOCOL_ARGS]
    command += ["--include", str(path), "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "another version" in proc.stderr
    assert "ROW" not in proc.stdout and not out.exists()


def _sweep(subjects, seconds_per_draw_exponent, ess, machine="A", speed=1.0):
    """Rows of a sweep whose sampling seconds grow as subjects^exponent and whose min ESS is
    ``ess`` (one value per row)."""
    subjects = pd.Series(subjects, dtype=float)
    sampling = speed * subjects**seconds_per_draw_exponent
    ess = pd.Series(ess, dtype=float)
    return pd.DataFrame(
        {
            "subjects": subjects,
            "backend": "nutpie",
            "seed": range(len(subjects)),
            "sampling_s": sampling,
            "min_ess_bulk": ess,
            "s_per_ess": sampling / ess,
            "machine": machine,
        }
    )


def sweep_summary(tmp_path, rows: pd.DataFrame) -> dict:
    """The summary of ``rows`` recorded as an earlier run of the protocol."""
    path = tmp_path / "rows.csv"
    rows.assign(spec_sha256=spec_sha256(), command=recorded_command()).to_csv(path, index=False)
    return summarise(tmp_path, path)


def test_the_exponent_splits_into_the_cost_of_a_draw_and_draws_per_effective_sample(tmp_path):
    sizes = [50, 100, 200, 400] * 2
    rows = _sweep(sizes, 1.0, [1000 * (n / 50) ** -0.2 for n in sizes])
    got = sweep_summary(tmp_path, rows)["nutpie_s_per_ess_scaling"]
    assert got["exponent"] == pytest.approx(1.2, abs=1e-3)
    assert got["sampling_seconds_exponent"] == pytest.approx(1.0, abs=1e-3)
    assert got["draws_per_effective_sample_exponent"] == pytest.approx(0.2, abs=1e-3)
    assert got["standard_error"] == pytest.approx(0.0, abs=1e-6)


def test_the_interval_is_that_of_the_least_squares_slope(tmp_path):
    from scipy import stats

    rng = np.random.default_rng(7)
    sizes = [50, 100, 210, 400] * 3
    rows = _sweep(sizes, 1.0, 1000 * np.exp(rng.normal(0, 0.25, len(sizes))))
    got = sweep_summary(tmp_path, rows)["nutpie_s_per_ess_scaling"]
    ref = stats.linregress(np.log(rows["subjects"]), np.log(rows["s_per_ess"]))
    half = stats.t.ppf(0.95, len(rows) - 2) * ref.stderr
    assert got["exponent"] == pytest.approx(ref.slope, abs=1e-3)
    assert got["standard_error"] == pytest.approx(ref.stderr, abs=1e-3)
    assert got["interval_90"] == pytest.approx([ref.slope - half, ref.slope + half], abs=1e-3)
    assert got["interval_90"][0] < 1.0 < got["interval_90"][1]
    # two sizes, one fit each, leave no residual degree of freedom
    assert sweep_summary(tmp_path, rows.iloc[:2])["nutpie_s_per_ess_scaling"] == {}


def test_machines_get_an_intercept_each(tmp_path):
    # the small trials on a fast machine, the large ones on one twice as slow: linear on each
    fast = _sweep([50, 100, 50, 100], 1.0, [1000, 1100, 1100, 1000], machine="fast")
    slow = _sweep([200, 400, 200, 400], 1.0, [1000, 1100, 1100, 1000], machine="slow", speed=2)
    rows = pd.concat([fast, slow], ignore_index=True)
    summary = sweep_summary(tmp_path, rows)
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.0, abs=1e-6)
    assert summary["nutpie_s_per_ess_scaling"]["machines"] == 2
    # pooled as if one machine, the slow machine's factor reads as growth
    pooled = rows.drop(columns="machine")
    assert sweep_summary(tmp_path, pooled)["nutpie_s_per_ess_exponent"] > 1.3
    # rows that recorded no machine (merged with rows that did) are a machine of their own
    unrecorded = pd.concat([fast, slow.drop(columns="machine")], ignore_index=True)
    assert unrecorded["machine"].isna().sum() == 4
    summary = sweep_summary(tmp_path, unrecorded)
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.0, abs=1e-6)
    assert summary["nutpie_s_per_ess_scaling"]["machines"] == 2


def test_summarise_writes_the_summary_of_earlier_rows_and_fits_nothing(tmp_path):
    path = _earlier(tmp_path, spec_sha256())
    rows = pd.read_csv(path)
    more = pd.concat([rows.assign(subjects=n, s_per_ess=0.02 * n / 50) for n in (50, 100)])
    more.to_csv(path, index=False)
    summary = summarise(tmp_path, path)
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.0, abs=1e-3)
    code, _out, err = pk_fit(*PROTOCOL_ARGS, "--summarise", "--out", tmp_path / "again.csv")
    assert code == 2 and "--summarise needs the rows of earlier runs" in err


def test_the_summary_gives_the_exponent_per_simulated_trial(tmp_path):
    """Rows without a trial_seed column read their simulated trial from their command: the
    default trial's seed when the command names none."""
    default_trial = load_config(REPO / "config" / "config.yaml")["seeds"]["simulate"]
    paths = []
    for trial, exponent in ((None, 1.0), (7, 1.4)):
        args = PROTOCOL_ARGS if trial is None else [*PROTOCOL_ARGS, "--trial-seed", str(trial)]
        path = _earlier(tmp_path, spec_sha256(), args=args, name=f"{trial}.csv")
        rows = pd.read_csv(path)
        sweep = [rows.assign(subjects=n, s_per_ess=0.02 * (n / 50) ** exponent) for n in (50, 400)]
        pd.concat(sweep).to_csv(path, index=False)
        paths.append(path)
    summary = summarise(tmp_path, *paths)
    per_trial = summary["nutpie_s_per_ess_exponent_per_trial_seed"]
    want = {str(default_trial): pytest.approx(1.0, abs=1e-3), "7": pytest.approx(1.4, abs=1e-3)}
    assert per_trial == want
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.2, abs=1e-3)
