"""benchmarks/pk_fit.py: rows of earlier runs join a summary only when they measured the same
thing (the same protocol on the same version of the model's specification)."""

from __future__ import annotations

import json

import numpy as np
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


def test_the_exponent_splits_into_the_cost_of_a_draw_and_draws_per_effective_sample():
    sizes = [50, 100, 200, 400] * 2
    rows = _sweep(sizes, 1.0, [1000 * (n / 50) ** -0.2 for n in sizes])
    got = pk_fit.scaling_interval(rows)
    assert got["exponent"] == pytest.approx(1.2, abs=1e-3)
    assert got["sampling_seconds_exponent"] == pytest.approx(1.0, abs=1e-3)
    assert got["draws_per_effective_sample_exponent"] == pytest.approx(0.2, abs=1e-3)
    assert got["standard_error"] == pytest.approx(0.0, abs=1e-6)


def test_the_interval_is_that_of_the_least_squares_slope():
    from scipy import stats

    rng = np.random.default_rng(7)
    sizes = [50, 100, 210, 400] * 3
    rows = _sweep(sizes, 1.0, 1000 * np.exp(rng.normal(0, 0.25, len(sizes))))
    got = pk_fit.scaling_interval(rows, level=0.9)
    ref = stats.linregress(np.log(rows["subjects"]), np.log(rows["s_per_ess"]))
    half = stats.t.ppf(0.95, len(rows) - 2) * ref.stderr
    assert got["exponent"] == pytest.approx(ref.slope, abs=1e-3)
    assert got["standard_error"] == pytest.approx(ref.stderr, abs=1e-3)
    assert got["interval_90"] == pytest.approx([ref.slope - half, ref.slope + half], abs=1e-3)
    assert got["interval_90"][0] < 1.0 < got["interval_90"][1]
    # two sizes, one fit each, leave no residual degree of freedom
    assert pk_fit.scaling_interval(rows.iloc[:2]) == {}


def test_machines_get_an_intercept_each():
    # the small trials on a fast machine, the large ones on one twice as slow: linear on each
    fast = _sweep([50, 100, 50, 100], 1.0, [1000, 1100, 1100, 1000], machine="fast")
    slow = _sweep([200, 400, 200, 400], 1.0, [1000, 1100, 1100, 1000], machine="slow", speed=2)
    rows = pd.concat([fast, slow], ignore_index=True)
    assert pk_fit.scaling_exponent(rows) == pytest.approx(1.0, abs=1e-6)
    assert pk_fit.scaling_interval(rows)["machines"] == 2
    # pooled as if one machine, the slow machine's factor reads as growth
    pooled = rows.drop(columns="machine")
    assert pk_fit.scaling_exponent(pooled) > 1.3
    # rows that recorded no machine (merged with rows that did) are a machine of their own
    unrecorded = pd.concat([fast, slow.drop(columns="machine")], ignore_index=True)
    assert unrecorded["machine"].isna().sum() == 4
    assert pk_fit.scaling_exponent(unrecorded) == pytest.approx(1.0, abs=1e-6)
    assert pk_fit.scaling_interval(unrecorded)["machines"] == 2


def test_summarise_writes_the_summary_of_earlier_rows_and_fits_nothing(tmp_path):
    path = _earlier(tmp_path, pk_fit.spec_sha256("pk_2cmt_metab"))
    rows = pd.read_csv(path)
    more = pd.concat([rows.assign(subjects=n, s_per_ess=0.02 * n / 50) for n in (50, 100)])
    more.to_csv(path, index=False)
    out = tmp_path / "sweep.csv"
    pk_fit.main([*PROTOCOL_ARGS, "--summarise", "--include", str(path), "--out", str(out)])
    assert not out.exists()
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(SystemExit):
        pk_fit.main([*PROTOCOL_ARGS, "--summarise", "--out", str(out)])


def test_rows_record_their_simulated_trial_and_older_rows_read_it_from_their_command(tmp_path):
    sha = pk_fit.spec_sha256("pk_2cmt_metab")
    rows = _include(_earlier(tmp_path, sha))
    assert list(rows["trial_seed"]) == [pk_fit.TRIAL_SEED]
    other = _earlier(tmp_path, sha, args=[*PROTOCOL_ARGS, "--trial-seed", "7"], name="b.csv")
    assert list(_include(other)["trial_seed"]) == [7]


def test_the_summary_gives_the_exponent_per_simulated_trial(tmp_path):
    sha = pk_fit.spec_sha256("pk_2cmt_metab")
    paths = []
    for trial, exponent in ((1, 1.0), (2, 1.4)):
        path = _earlier(
            tmp_path, sha, args=[*PROTOCOL_ARGS, "--trial-seed", str(trial)], name=f"{trial}.csv"
        )
        rows = pd.read_csv(path)
        sweep = [rows.assign(subjects=n, s_per_ess=0.02 * (n / 50) ** exponent) for n in (50, 400)]
        pd.concat(sweep).to_csv(path, index=False)
        paths.append(str(path))
    out = tmp_path / "sweep.csv"
    pk_fit.main([*PROTOCOL_ARGS, "--summarise", "--include", *paths, "--out", str(out)])
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    per_trial = summary["nutpie_s_per_ess_exponent_per_trial_seed"]
    assert per_trial == {"1": pytest.approx(1.0, abs=1e-3), "2": pytest.approx(1.4, abs=1e-3)}
    assert summary["nutpie_s_per_ess_exponent"] == pytest.approx(1.2, abs=1e-3)
