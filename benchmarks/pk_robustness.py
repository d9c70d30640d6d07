"""Robustness of the default PK model to a truth it was not tuned to.

The virtual trial is simulated with the project's own simulator under a truth that departs from
what the default model (models/pk_2cmt_metab.yaml) assumes: MDD patients only, all at 0.5 mg/kg
over 40 min (``simulation.truth.parameters``: one dose level), no between-subject variability
on q and vp (``simulation.truth.no_bsv``) and a norketamine volume of 200 L where the model fixes
250 L (``pk.enantiomers.*.v_nk``). Each trial is fitted with the workflow's fit function
(``inference.fit_pk``) and the config's PK sampler settings (chains, draws and tuning as given),
and diagnosed by the workflow's ``inference.diagnose`` (the gate, the boundary flags and the BSV
advice, written to ``diagnostics.csv`` and ``gate.json`` beside each posterior). ``--models``
also fits the model without BSV on q and vp (``reduced``), the one the advice proposes.

Per fit (one CSV row): gate result and failures, max R-hat and its parameter, divergences, min
E-BFMI, min bulk and tail ESS, sampling and CPU seconds, and the flags; per parameter (the
``_estimates`` CSV): posterior mean and 90% interval against the truth and the values realised
in the trial's subjects. The summary JSON holds the settings, the command, the machine and, per
trial, the largest relative difference between the two models' population estimates and their
CPU-time and sampling-time ratios. A posterior already written under ``--posteriors`` with the same trial and
sampler settings is reused, not refitted (``--refit`` refits).

Usage:

    python benchmarks/pk_robustness.py --seeds 1 2 --chains 2 --draws 1000 --tune 1000 \\
        --models default reduced
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_pmx.checks import compare_with_truth, derived_fractions, diagnose, gate_notes
from ketamine_pmx.config import load_config, sampler_settings, validate_config
from ketamine_pmx.data import load_dataset, read_clean, write_clean
from ketamine_pmx.inference import fit_pk, load_idata, save_idata
from ketamine_pmx.io import read_csv, write_csv, write_json
from ketamine_pmx.models import load_pk_spec, without_bsv
from ketamine_pmx.simulate import pk_truth, sample_pk_truth, simulate_trial

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The truth of the experiment (config ``simulation`` keys).
TRUTH = {
    "arms": {"MDD": 80},
    "truth": {
        "no_bsv": ["q", "vp"],
        "parameters": {
            "pk.enantiomers.*.v_nk": 200.0,
            "arms.MDD.regimen.dose_levels_mg_kg": [0.5],
        },
    },
}
REMOVED_BSV = ("q", "vp")


def trial_config(seed: int, args: argparse.Namespace) -> dict:
    config = load_config(REPO / "config" / "config.yaml")
    config["seeds"]["simulate"] = seed
    config["simulation"]["parameters"] = str(REPO / config["simulation"]["parameters"])
    config["simulation"]["arms"] = {"MDD": args.patients}
    config["simulation"]["truth"].update(TRUTH["truth"])
    config["simulation"]["truth"]["parameters"] = {
        **TRUTH["truth"]["parameters"],
        "pk.enantiomers.*.v_nk": args.v_nk,
    }
    return validate_config(config, source="pk_robustness")


def make_trial(config: dict, tmp: Path) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Simulate, validate through the data contract; the clean table and the truth."""
    trial = simulate_trial(config)
    paths = trial.write(tmp)
    write_clean(load_dataset(paths["data"], config["data"]), tmp / "clean.csv")
    return read_clean(tmp / "clean.csv"), trial.population, trial.subjects


def model_spec(name: str):
    spec = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    return without_bsv(spec, REMOVED_BSV) if name == "reduced" else spec


def fit_or_reuse(table, spec, sampler, seed, path: Path, refit: bool) -> tuple[object, float, bool]:
    """The posterior at ``path`` when it was sampled with these settings, else a new fit; with
    the fit's CPU seconds (user + system, all threads: compile and sampling) and whether it was reused."""
    if path.is_file() and not refit:
        idata = load_idata(path)
        attrs = idata.posterior.attrs
        same = (
            json.loads(attrs["sampler_settings"]) == json.loads(json.dumps(sampler))
            and int(attrs["seed"]) == seed
            and attrs["spec_sha256"] == spec.sha256
        )
        if same:
            return idata, float(attrs.get("cpu_seconds", np.nan)), True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    idata, _ = fit_pk(table, spec, sampler, seed)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    idata.posterior.attrs["cpu_seconds"] = round(cpu, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_idata(idata, path)
    return idata, cpu, False


def estimates(idata, population: dict, subjects: pd.DataFrame) -> pd.DataFrame:
    """Posterior mean and 90% interval against the truth, with the fraction through NK."""
    table = compare_with_truth(
        idata, pk_truth(population), sample_truth=sample_pk_truth(population, subjects)
    )
    pk = population["parameters"]["pk"]["enantiomers"]
    rows = []
    for name, x in derived_fractions(idata.posterior).items():
        for c in x.coords["enantiomer"].values:
            v = x.sel(enantiomer=c).values.ravel()
            truth = pk[str(c)]["fm_nk"]
            q5, q95 = np.quantile(v, [0.05, 0.95])
            rows.append(
                {"parameter": f"{name}[{c}]", "truth": truth, "mean": float(v.mean()),
                 "q5": q5, "q95": q95, "inside": bool(q5 <= truth <= q95),
                 "sample_truth": truth, "inside_sample": bool(q5 <= truth <= q95)}
            )  # fmt: skip
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    rows, est_rows = [], []
    for seed in args.seeds:
        config = trial_config(seed, args)
        sampler = sampler_settings(config, "pk")
        sampler.update(chains=args.chains, draws=args.draws, tune=args.tune, cores=args.cores)
        fit_seed = args.fit_seed if args.fit_seed is not None else int(config["seeds"]["fit_pk"])
        with tempfile.TemporaryDirectory() as tmp:
            table, population, subjects = make_trial(config, Path(tmp))
        for model in args.models:
            spec = model_spec(model)
            where = Path(args.posteriors) / f"trial{seed}_{model}"
            start = time.perf_counter()
            idata, cpu, reused = fit_or_reuse(
                table, spec, sampler, fit_seed, where / "posterior.nc", args.refit
            )
            wall = time.perf_counter() - start
            failures = diagnose(
                idata, config["gate"], where / "diagnostics.csv", where / "gate.json"
            )
            gate = json.loads((where / "gate.json").read_text(encoding="utf-8"))
            diag = read_csv(where / "diagnostics.csv")
            params = diag[~diag["parameter"].str.startswith("shrinkage_")]
            worst = params.loc[params["r_hat"].idxmax()]
            attrs = idata.posterior.attrs
            rows.append(
                {
                    "trial_seed": seed,
                    "fit_seed": fit_seed,
                    "model": model,
                    "subjects": int(table["ID"].nunique()),
                    "gate_passed": not failures,
                    "gate_failures": " | ".join(failures),
                    "rhat_max": float(worst["r_hat"]),
                    "rhat_parameter": worst["parameter"],
                    "divergences": gate["divergences"],
                    "e_bfmi_min": gate["e_bfmi_min"],
                    "ess_bulk_min": float(params["ess_bulk"].min()),
                    "ess_tail_min": float(params["ess_tail"].min()),
                    "sampling_seconds": attrs.get("sampling_seconds"),
                    "cpu_seconds": cpu,
                    "wall_seconds": None if reused else round(wall, 1),
                    "reused": reused,
                    "flags": " | ".join(gate["flags"]),
                    "advice": " | ".join(gate["advice"]),
                }
            )
            est = estimates(idata, population, subjects)
            est_rows.append(est.assign(trial_seed=seed, model=model))
            print(
                f"trial {seed} {model}: gate {'passed' if not failures else 'FAILED'}; "
                f"R-hat {worst['r_hat']:.3f} ({worst['parameter']}), "
                f"{gate['divergences']} divergences, E-BFMI {gate['e_bfmi_min']:.2f}, "
                f"min ESS {rows[-1]['ess_bulk_min']:.0f}/{rows[-1]['ess_tail_min']:.0f}, "
                f"CPU {cpu:.0f} s{' (reused)' if reused else ''}",
                flush=True,
            )
            for note in gate_notes(gate):
                print(f"  {note}", flush=True)
    table = pd.DataFrame(rows)
    est = pd.concat(est_rows, ignore_index=True)
    return table, est, {"sampler": sampler}


def compare_models(table: pd.DataFrame, est: pd.DataFrame) -> dict:
    """Per trial: the largest relative difference of the two models' population means (over
    the parameters both estimate, omegas of the removed groups aside) and the CPU ratio."""
    out = {}
    if not {"default", "reduced"} <= set(table["model"]):
        return out
    for seed, g in est.groupby("trial_seed"):
        wide = g.pivot_table(index="parameter", columns="model", values="mean").dropna()
        rel = (wide["reduced"] / wide["default"] - 1).abs()
        fits = table[table["trial_seed"] == seed].set_index("model")
        cpu, sampling = fits["cpu_seconds"], fits["sampling_seconds"]
        out[str(seed)] = {
            "max_relative_difference": float(rel.max()),
            "parameter": str(rel.idxmax()),
            "cpu_ratio_reduced_to_default": float(cpu["reduced"] / cpu["default"]),
            "sampling_ratio_reduced_to_default": float(sampling["reduced"] / sampling["default"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="simulator seeds")
    p.add_argument("--fit-seed", type=int, help="sampler seed (default: config seeds.fit_pk)")
    p.add_argument("--patients", type=int, default=80)
    p.add_argument("--v-nk", type=float, default=200.0, help="true NK volume (L)")
    p.add_argument("--models", nargs="+", choices=["default", "reduced"], default=["default"])
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--posteriors", default=str(REPO / "results" / "pk_robustness"))
    p.add_argument("--out", default=str(HERE / "results" / "pk_robustness"))
    p.add_argument("--refit", action="store_true", help="refit even where a posterior exists")
    args = p.parse_args(argv)
    table, est, extra = run(args)
    out = Path(args.out)
    write_csv(out.with_name(out.name + ".csv"), table, float_format="%.6g")
    write_csv(out.with_name(out.name + "_estimates.csv"), est, float_format="%.6g")
    summary = {
        "command": "python benchmarks/pk_robustness.py " + shlex.join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "truth": {**TRUTH, "arms": {"MDD": args.patients}},
        "sampler": extra["sampler"],
        "gate_passed": {
            f"{r.trial_seed}/{r.model}": bool(r.gate_passed) for r in table.itertuples()
        },
        "reduced_vs_default": compare_models(table, est),
    }
    write_json(out.with_name(out.name + "_summary.json"), summary)
    print(json.dumps(summary["reduced_vs_default"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
