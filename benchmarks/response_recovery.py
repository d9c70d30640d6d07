"""Response-stage recovery on the default virtual trial, with PK-like exposure uncertainty.

The response models are fitted to the default trial's outcomes (``results/data/clean.csv`` of
the default run) with each patient's log AUC of HNK taken as the simulator's true value plus
Normal(0, 0.15) noise and reported with SD 0.15, the width of a PK posterior of log exposure.
This checks the response stage (errors-in-variables likelihood, partial pooling, PSIS-LOO) at
full size without waiting for the population PK fit; the workflow itself takes the exposures
from the PK posterior (rule ``exposures``).

    snakemake --cores 2 results/data/clean.csv      # the default trial, if not there yet
    python benchmarks/response_recovery.py          # prints and writes the tables below

Writes ``benchmarks/results/response_recovery_{truth,effects,loo_responder,loo_pct_change}.csv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ketamine_pmx.checks import compare, effects_vs_truth
from ketamine_pmx.config import load_config, sampler_settings
from ketamine_pmx.data import outcome_table, read_clean
from ketamine_pmx.inference import fit_response
from ketamine_pmx.io import write_csv
from ketamine_pmx.models import load_response_spec
from ketamine_pmx.response import effects_table

LOG_SD = 0.15
OUT = Path(__file__).parent / "results"


def main() -> None:
    cfg = load_config("config/config.yaml")
    results = Path(cfg["results_dir"])
    table = read_clean(results / "data" / "clean.csv")
    truth = pd.read_csv(results / "simulated" / "truth_subjects.csv")
    population = json.loads((results / "simulated" / "truth_population.json").read_text())
    outcomes = outcome_table(table, cfg["response"]).table
    rng = np.random.default_rng(5)
    exposures = pd.DataFrame(
        {
            "ID": truth["ID"],
            "metric": "AUC_HNK",
            "log_mean": np.log(truth["AUC_HNK"]) + LOG_SD * rng.standard_normal(len(truth)),
            "log_sd": LOG_SD,
        }
    )
    fits, specs = {}, {}
    for name in cfg["models"]["response"]:
        specs[name] = load_response_spec(Path(cfg["models"]["dir"]) / f"{name}.yaml")
        t0 = time.perf_counter()
        fits[name], _ = fit_response(
            outcomes,
            specs[name],
            exposures,
            sampler_settings(cfg, "response"),
            cfg["seeds"]["fit_response"],
        )
        a = fits[name].posterior.attrs
        print(
            f"{name}: wall {time.perf_counter() - t0:.0f} s (compile {a['compile_seconds']:.0f}, "
            f"sampling {a['sampling_seconds']:.0f}), "
            f"{int(fits[name].sample_stats['diverging'].sum())} divergences",
            flush=True,
        )
    reference = cfg["models"]["response"][0]
    recovery = effects_vs_truth(fits[reference], specs[reference], population)
    write_csv(OUT / "response_recovery_truth.csv", recovery, float_format="%.4g")
    effects = effects_table(fits[reference], specs[reference])
    write_csv(OUT / "response_recovery_effects.csv", effects, float_format="%.4g")
    print(recovery.to_string())
    for outcome in ("responder", "pct_change"):
        loo, _ = compare(fits, outcome)
        write_csv(OUT / f"response_recovery_loo_{outcome}.csv", loo, float_format="%.5g")
        print(loo[["model", "rank", "elpd_loo", "se", "elpd_diff", "dse", "weight"]].to_string())


if __name__ == "__main__":
    main()
