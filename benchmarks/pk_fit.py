"""Population PK fitting benchmark: nutpie vs PyMC's NUTS (and Stan, through pystan).

For each trial size (subjects; the three arms keep the default trial's 120:60:30 split), the
virtual trial is simulated with the default truth and seed, validated through the data
contract, and the default PK model (models/pk_2cmt_metab.yaml) is fitted with each backend,
every fit in its own process (so peak memory is that fit's). Recorded per fit: compile seconds,
sampling seconds (tuning + draws), min bulk and tail ESS over the population parameters, min
bulk ESS per sampling second, seconds per effective sample, divergences, leapfrog steps per
draw, max R-hat and the fit's peak resident memory. The Stan program
(benchmarks/stan/) is written with non-centred subject effects, so its fits use the spec with
``bsv.parameterisation: noncentred`` (the same posterior); ``--parameterisation noncentred``
runs every backend that way, for a like-for-like sampler comparison. The table goes to benchmarks/results/pk_fit.csv with the machine
and the command; the scaling exponent of seconds per effective sample against subjects
(least squares on log-log, per backend) and the nutpie/Stan ESS-per-second ratio go to
benchmarks/results/pk_fit_summary.json. ``--include`` adds the rows of earlier runs of the same
protocol (model, draws, tuning, chains, cores, target acceptance, mass matrix: read from each
row's recorded command, and refused when any differs) on the same model specification (the hash
of its file, recorded per row as spec_sha256) to the summary, so that one long sweep can be run
in parts. ``--seed 1 2 3`` fits every size with each sampler seed and ``--trial-seed A B``
simulates every size with each simulator seed (one fit's min ESS is a noisy measure, and the
worst parameter's ESS depends on the trial drawn); the exponent is then fitted to every fit
(with an intercept per recorded machine), with its 90% confidence interval and its split into
the growth of the sampling time and of the draws per effective sample, and per seed and per
trial in the summary. ``--summarise`` fits nothing and writes the summary of the ``--include``
rows.

Usage (defaults: the issue's protocol, 4 chains x 1000 draws after 1000 tuning, 2 cores):

    python benchmarks/pk_fit.py
    python benchmarks/pk_fit.py --sizes 50 100 --backends nutpie --draws 500 --tune 500
    python benchmarks/pk_fit.py --sizes 50 100 400 --tune 300 --target-accept 0.8 \
        --backends nutpie --include benchmarks/results/pk_fit_default_trial.csv

Stan needs the ``bench`` extra (``pip install -e '.[bench]'``); it is skipped, with a note,
when pystan is not installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF

import numpy as np
import pandas as pd

from ketamine_pmx.io import atomic_path, write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARMS = {"MDD": 120, "CRPS_OUT": 60, "CRPS_IN": 30}


#: The simulator's seed of the default trial (config/config.yaml).
TRIAL_SEED = 20261121


def trial_arms(n_subjects: int) -> dict[str, int]:
    """The default trial's arm split scaled to ``n_subjects`` (largest remainders)."""
    total = sum(ARMS.values())
    raw = {k: n_subjects * v / total for k, v in ARMS.items()}
    arms = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - arms[k], reverse=True)[
        : n_subjects - sum(arms.values())
    ]:
        arms[k] += 1
    return arms


def make_table(n_subjects: int, seed: int) -> pd.DataFrame:
    """Simulate and validate a trial of ``n_subjects`` (the clean table the fit reads)."""
    from ketamine_pmx.config import load_config
    from ketamine_pmx.data import load_dataset, read_clean, write_clean
    from ketamine_pmx.simulate import simulate_trial

    config = load_config(REPO / "config" / "config.yaml")
    config["simulation"]["arms"] = trial_arms(n_subjects)
    config["seeds"]["simulate"] = seed
    trial = simulate_trial(config)
    with tempfile.TemporaryDirectory() as tmp:
        paths = trial.write(tmp)
        write_clean(load_dataset(paths["data"], config["data"]), Path(tmp) / "clean.csv")
        return read_clean(Path(tmp) / "clean.csv")


def assignments(items: list[str]) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options as (name, value) pairs (value "" for ``NAME=``)."""
    return [(name, value) for name, _, value in (item.partition("=") for item in items)]


def run_one(args: argparse.Namespace) -> dict:
    """One fit (called in a child process); returns its row."""
    from ketamine_pmx.checks import diagnostics_table, population_variables, run_statistics
    from ketamine_pmx.inference import fit_pk
    from ketamine_pmx.models import load_pk_spec, with_bsv, with_parameter

    table = make_table(args.one_size, args.one_trial_seed)
    spec = load_pk_spec(REPO / "models" / f"{args.model}.yaml")
    # The Stan program is written non-centred: the same posterior in other free variables.
    how = "noncentred" if args.one_backend == "stan" else args.parameterisation
    if how == "information":  # every effect's weight from its information: no hand-picked ones
        spec = with_bsv(spec, parameterisation=how, noncentred_groups=[], centring_weights={})
    elif how is not None:
        spec = with_bsv(spec, parameterisation=how)
    if args.one_backend != "stan":  # the Stan program samples the clearances themselves
        if args.centred_scale is not None:
            spec = with_bsv(spec, centred_scale=args.centred_scale)
        for name, per in assignments(args.sample_per):
            spec = with_parameter(spec, name, sample_per=per or None)
        if args.centring_weights:  # partially centred groups are no longer non-centred
            weights = {g: float(w) for g, w in assignments(args.centring_weights)}
            kept = [g for g in spec.spec["bsv"]["noncentred_groups"] if g not in weights]
            spec = with_bsv(spec, centring_weights=weights, noncentred_groups=kept)
        if args.whitening is not None:
            spec = with_bsv(spec, whitening=args.whitening)
        for name, other in assignments(args.sample_with):
            spec = with_parameter(spec, name, sample_with=other or None)
    sampler = {
        "backend": args.one_backend,
        "draws": args.draws,
        "tune": args.tune,
        "chains": args.chains,
        "cores": args.cores,
        "target_accept": args.target_accept,
        "low_rank_mass_matrix": not args.diagonal,
        "max_depth": args.max_depth,
    }
    if args.one_backend == "stan":
        sys.path.insert(0, str(HERE / "stan"))
        from run_stan import fit_stan

        out = fit_stan(
            table,
            spec,
            chains=args.chains,
            draws=args.draws,
            tune=args.tune,
            seed=args.one_seed,
            target_accept=args.target_accept,
            max_depth=args.max_depth,
        )
        idata, compile_s, sampling_s = out["idata"], out["compile_s"], out["sampling_s"]
        tuning_steps = build_s = float("nan")
    else:
        idata, _ = fit_pk(table, spec, sampler, args.one_seed)
        attrs = idata.posterior.attrs
        compile_s, sampling_s = attrs["compile_seconds"], attrs["sampling_seconds"]
        build_s = attrs["build_seconds"]
        tuning_steps = attrs["tuning_leapfrog_steps"]
    diag = diagnostics_table(idata)
    params = diag[diag["parameter"].str.split("[").str[0].isin(population_variables(idata))]
    stats = run_statistics(idata)
    ess_bulk = float(params["ess_bulk"].min())
    return {
        "subjects": args.one_size,
        "backend": args.one_backend,
        "seed": args.one_seed,
        "trial_seed": args.one_trial_seed,
        "observations": int(idata.observed_data["y"].size),
        "parameterisation": spec.spec["bsv"]["parameterisation"],
        # building the PyMC model (with bsv.whitening: laplace, its empirical Bayes step)
        "build_s": round(float(build_s), 2),
        "compile_s": round(float(compile_s), 2),
        "sampling_s": round(float(sampling_s), 2),
        "min_ess_bulk": round(ess_bulk, 1),
        "min_ess_tail": round(float(params["ess_tail"].min()), 1),
        "worst_parameter": str(params.loc[params["ess_bulk"].idxmin(), "parameter"]),
        "min_ess_per_s": round(ess_bulk / float(sampling_s), 3),
        "s_per_ess": round(float(sampling_s) / ess_bulk, 4),
        "max_rhat": round(float(params["r_hat"].max()), 4),
        "divergences": stats["divergences"],
        # the step size tuning chose, mean over chains: it falls as the posterior's dimension
        # grows (as d^(-1/4) for a well-conditioned one)
        "step_size": round(float(idata.sample_stats["step_size"].mean()), 4),
        # leapfrog steps (gradient evaluations) per draw after tuning, mean over chains
        "steps_per_draw": (
            round(float(idata.sample_stats["n_steps"].mean()), 1)
            if "n_steps" in idata.sample_stats
            else float("nan")
        ),
        # the same per tuning iteration: how much of the sampling time tuning takes
        "steps_per_tuning_iteration": round(tuning_steps / (args.chains * args.tune), 1)
        if args.tune
        else float("nan"),
        # Stan's chains run in worker processes: count the largest of them too.
        "peak_rss_mb": round(
            max(resource.getrusage(who).ru_maxrss for who in (RUSAGE_SELF, RUSAGE_CHILDREN)) / 1024,
            1,
        ),
    }


PROTOCOL = (
    "model",
    "draws",
    "tune",
    "chains",
    "cores",
    "target_accept",
    "diagonal",
    "parameterisation",
    "max_depth",
    "sample_per",
    "sample_with",
    "centred_scale",
    "centring_weights",
    "whitening",
)


def protocol(args: argparse.Namespace) -> dict:
    """What must match for two fits' seconds per effective sample to be compared."""
    return {k: getattr(args, k) for k in PROTOCOL}


def spec_sha256(model: str) -> str:
    """The hash of the model's specification as shipped (before the command's options)."""
    from ketamine_pmx.models import load_pk_spec

    return load_pk_spec(REPO / "models" / f"{model}.yaml").sha256


def included_rows(
    paths: list[Path], parser: argparse.ArgumentParser, want: dict, sha256: str
) -> pd.DataFrame:
    """Rows of earlier runs whose recorded command ran the protocol ``want`` on the model
    specification whose hash is ``sha256``; else an error."""
    frames = []
    for path in paths:
        rows = pd.read_csv(path)
        recorded = rows["spec_sha256"] if "spec_sha256" in rows else pd.Series([""] * len(rows))
        for i, got_sha in enumerate(recorded):
            if got_sha != sha256:
                raise SystemExit(
                    f"{path}: row {i + 2} was fitted with another version of "
                    f"models/{want['model']}.yaml (spec_sha256 {got_sha or 'not recorded'}, "
                    f"this run's {sha256})"
                )
        seeds, trial_seeds = [], []
        for i, command in enumerate(rows["command"]):
            words = shlex.split(command)
            recorded_args = parser.parse_args(words[words.index("benchmarks/pk_fit.py") + 1 :])
            seeds.append(recorded_args.seed[0])
            trial_seeds.append(recorded_args.trial_seed[0])
            got = protocol(recorded_args)
            diff = {k: (got[k], want[k]) for k in PROTOCOL if got[k] != want[k]}
            if diff:
                raise SystemExit(
                    f"{path}: row {i + 2} was run with another protocol "
                    f"(field: (its value, this run's)): {diff}"
                )
        if "seed" not in rows:  # rows of one seed each, from before the column
            rows["seed"] = seeds
        if "trial_seed" not in rows:  # likewise one simulated trial per size
            rows["trial_seed"] = trial_seeds
        frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _machines(rows: pd.DataFrame) -> pd.Series:
    """Each row's recorded machine; rows that recorded none (older files, or a column missing
    from some of the merged files) count as one machine of their own."""
    recorded = rows["machine"] if "machine" in rows else pd.Series(index=rows.index, dtype=object)
    return recorded.fillna("not recorded")


def _log_log_slope(rows: pd.DataFrame, y: np.ndarray) -> tuple[float, float, int]:
    """Least-squares slope of ``y`` on log(subjects), its standard error and the residual
    degrees of freedom. Rows measured on different machines (the recorded ``machine``) get an
    intercept each: a machine's speed scales every time it records, not their growth."""
    x = np.log(rows["subjects"].to_numpy(float))
    design = np.column_stack([x, pd.get_dummies(_machines(rows).to_numpy()).to_numpy(float)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(y) - design.shape[1]
    if dof < 1:
        return float(coef[0]), float("nan"), dof
    s2 = float(np.sum((y - design @ coef) ** 2)) / dof
    return float(coef[0]), float(np.sqrt(s2 * np.linalg.inv(design.T @ design)[0, 0])), dof


def scaling_exponent(rows: pd.DataFrame) -> float:
    """Slope of log(seconds per effective sample) on log(subjects), least squares over every
    row (with several sampler seeds, every fit of every size; an intercept per machine)."""
    if rows["subjects"].nunique() < 2:
        return float("nan")
    return _log_log_slope(rows, np.log(rows["s_per_ess"].to_numpy(float)))[0]


def scaling_interval(rows: pd.DataFrame, level: float = 0.9) -> dict:
    """The exponent with its uncertainty, and the two factors it is the sum of.

    One fit's min ESS is a noisy measure, so one exponent says little without its interval:
    the ``level`` confidence interval of the least-squares slope (Student's t on the residual
    degrees of freedom; it needs more fits than sizes and machines, i.e. several seeds, to say
    anything). Since seconds per effective sample = sampling seconds / min ESS and every fit
    of one protocol runs the same draws, the exponent splits exactly into that of the sampling
    seconds (the cost of a draw) and that of 1 / min ESS (draws per effective sample).
    """
    from scipy import stats

    if rows["subjects"].nunique() < 2:
        return {}
    slope, se, dof = _log_log_slope(rows, np.log(rows["s_per_ess"].to_numpy(float)))
    if dof < 1:
        return {}
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    cost = _log_log_slope(rows, np.log(rows["sampling_s"].to_numpy(float)))[0]
    draws = _log_log_slope(rows, -np.log(rows["min_ess_bulk"].to_numpy(float)))[0]
    return {
        "fits": len(rows),
        "machines": int(_machines(rows).nunique()),
        "exponent": round(slope, 3),
        "standard_error": round(se, 3),
        f"interval_{round(level * 100)}": [round(slope - half, 3), round(slope + half, 3)],
        "sampling_seconds_exponent": round(cost, 3),
        "draws_per_effective_sample_exponent": round(draws, 3),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}; Python {platform.python_version()}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    p.add_argument("--backends", nargs="+", default=["nutpie", "pymc", "stan"])
    p.add_argument("--model", default="pk_2cmt_metab")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--target-accept", type=float, default=0.9)
    p.add_argument("--diagonal", action="store_true", help="nutpie: diagonal mass matrix only")
    p.add_argument(
        "--max-depth", type=int, default=10, help="largest NUTS tree depth (all backends)"
    )
    p.add_argument(
        "--parameterisation",
        choices=["noncentred", "centred", "partial", "information"],
        help="subject effects (default: the spec's; Stan always runs non-centred)",
    )
    p.add_argument(
        "--centred-scale",
        choices=["parameter", "apparent"],
        help="what centred subjects sample (bsv.centred_scale; default: the spec's)",
    )
    p.add_argument(
        "--sample-per",
        nargs="+",
        default=[],
        metavar="NAME=FRACTION",
        help="sample clearance NAME per FRACTION (the spec key sample_per; NAME= removes it)",
    )
    p.add_argument(
        "--sample-with",
        nargs="+",
        default=[],
        metavar="NAME=OTHER",
        help="sample clearances NAME and OTHER as total and share (the spec key sample_with; "
        "NAME= removes it)",
    )
    p.add_argument(
        "--centring-weights",
        nargs="+",
        default=[],
        metavar="GROUP=W",
        help="partially centre BSV group GROUP with weight W for the rich subjects "
        "(bsv.centring_weights; the group leaves bsv.noncentred_groups)",
    )
    p.add_argument(
        "--whitening",
        choices=["none", "laplace"],
        default=None,
        help="bsv.whitening: sample each subject's effects in coordinates that whiten its "
        "Laplace approximation (default: the spec's setting)",
    )
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[1],
        help="sampler seed(s): every size is fitted with each; the exponent is fitted to all "
        "the fits, and per seed in the summary",
    )
    p.add_argument(
        "--trial-seed",
        type=int,
        nargs="+",
        default=[TRIAL_SEED],
        help="simulator seed(s): every size is simulated with each, and fitted with every "
        "sampler seed (the worst parameter's ESS depends on the trial drawn as much as on the "
        "sampler's seed, so the exponent is better measured over several trials per size)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "pk_fit.csv")
    p.add_argument(
        "--include",
        type=Path,
        nargs="+",
        default=[],
        help="CSV files of earlier runs of the same protocol, merged into the summary",
    )
    p.add_argument(
        "--summarise",
        action="store_true",
        help="fit nothing: write the summary of the --include rows (to --out's _summary.json)",
    )
    p.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--one-backend", help=argparse.SUPPRESS)
    p.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--one-trial-seed", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    if args.one_size is not None:  # child: one fit, one JSON line on stdout
        print("ROW " + json.dumps(run_one(args)), flush=True)
        return 0

    command = "python benchmarks/pk_fit.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    sha256 = spec_sha256(args.model)
    earlier = included_rows(args.include, p, protocol(args), sha256)  # before expensive work
    if args.summarise:
        if not len(earlier):
            p.error("--summarise needs the rows of earlier runs (--include)")
        summary = summarise(earlier, command, args.include, [])
        write_json(args.out.with_name(args.out.stem + "_summary.json"), summary)
        print(json.dumps(summary, indent=2))
        return 0
    rows, notes = [], []
    runs = itertools.product(args.sizes, args.trial_seed, args.seed, args.backends)
    for size, trial_seed, seed, backend in runs:
        if backend == "stan":
            try:
                import stan  # noqa: F401
            except ImportError:
                notes.append("stan skipped: pystan is not installed (pip install -e '.[bench]')")
                continue
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        child += ["--one-size", str(size), "--one-backend", backend, "--one-seed", str(seed)]
        child += ["--one-trial-seed", str(trial_seed)]
        t0 = time.perf_counter()
        proc = subprocess.run(child, capture_output=True, text=True, cwd=REPO)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not found:
            err = proc.stderr.replace(f"{REPO}{os.sep}", "").strip()  # repository-relative
            notes.append(
                f"{backend} at {size} subjects (trial {trial_seed}), seed {seed}, failed: "
                f"{err[-400:]}"
            )
            print(notes[-1], file=sys.stderr)
            continue
        row = json.loads(found[-1][4:])
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        print("no fit succeeded", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    table["spec_sha256"] = sha256
    table["machine"] = machine()
    table["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    if len(earlier):
        key = ["subjects", "backend", "seed", "trial_seed"]
        new = set(table[key].itertuples(index=False, name=None))
        keep = [k not in new for k in earlier[key].itertuples(index=False, name=None)]
        table = pd.concat([table, earlier[keep]], ignore_index=True)
    summary = summarise(table, command, args.include, notes)
    write_json(args.out.with_name(args.out.stem + "_summary.json"), summary)
    print(table.drop(columns=["spec_sha256", "machine", "command"]).to_string(index=False))
    print(json.dumps(summary, indent=2))
    return 0


def summarise(table: pd.DataFrame, command: str, include: list[Path], notes: list[str]) -> dict:
    """The summary of a sweep: the scaling exponent per backend (over every fit, per sampler
    seed, per simulated trial, and with its interval and factors) and nutpie's min-ESS/s over
    the other backends' per size (each backend's mean over its fits of that size)."""
    summary: dict = {"command": command, "machine": machine(), "notes": notes}
    if include:
        summary["included"] = sorted({str(p) for p in include})
    for backend, sub in table.groupby("backend"):
        summary[f"{backend}_s_per_ess_exponent"] = round(scaling_exponent(sub), 3)
        if sub["seed"].nunique() > 1:
            summary[f"{backend}_s_per_ess_exponent_per_seed"] = {
                int(seed): round(scaling_exponent(one), 3) for seed, one in sub.groupby("seed")
            }
        if sub["trial_seed"].nunique() > 1:
            summary[f"{backend}_s_per_ess_exponent_per_trial_seed"] = {
                int(trial): round(scaling_exponent(one), 3)
                for trial, one in sub.groupby("trial_seed")
            }
        if {"sampling_s", "min_ess_bulk"} <= set(sub):
            summary[f"{backend}_s_per_ess_scaling"] = scaling_interval(sub)
    if "min_ess_per_s" not in table:
        return summary
    wide = table.pivot_table(
        index="subjects", columns="backend", values="min_ess_per_s", aggfunc="mean"
    )
    for other in ("stan", "pymc"):
        if {"nutpie", other} <= set(wide):
            ratio = (wide["nutpie"] / wide[other]).dropna()
            summary[f"nutpie_over_{other}_min_ess_per_s"] = {
                int(k): round(v, 2) for k, v in ratio.items()
            }
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
