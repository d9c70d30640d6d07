"""Speed of dose recommendations: N new patients without concentrations over the default
regimen grid (config/config.yaml's dosing section), with the simulator's truth as the models
(``ketamine_pmx.oracle``; the cost does not depend on where the posterior draws come from).

    python benchmarks/dosing_speed.py --patients 1000 [--repeat 2] [--out FILE]
    python benchmarks/dosing_speed.py --cli --patients 1000 [--repeat 2] [-- CLI OPTIONS]

Patients are drawn from the simulator's covariate model with the default arm mix (MDD,
CRPS outpatient, CRPS inpatient). Reports seconds for the whole recommendation (individual
draws, every candidate regimen's exposures and P(response)/P(limits), the decision) and per
patient.

With ``--cli`` it times ``ketamine-pmx recommend`` end to end instead (a new process: imports,
reading the posteriors, checking the patients file, the recommendation and every output file):
the same models are saved as a run directory, and the patients file is the example patients
(``data/new_patients.csv``) repeated under new IDs up to ``--patients`` rows. Arguments after
``--`` go to the command (e.g. ``-- --figures all``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ketamine_pmx.config import load_config  # noqa: E402
from ketamine_pmx.dosing import make_models, recommend, regimen_grid  # noqa: E402
from ketamine_pmx.inference import save_idata  # noqa: E402
from ketamine_pmx.models import load_pk_spec, load_response_spec  # noqa: E402
from ketamine_pmx.simulate import (  # noqa: E402
    draw_subjects,
    load_parameters,
    oracle_pk_posterior,
    oracle_response,
    simulate_trial,
)


def _cli(models, config: dict, n: int, repeat: int, extra: list[str]) -> dict:
    """Seconds of ``ketamine-pmx recommend`` on ``n`` patients, end to end (best of ``repeat``)."""
    import arviz as az

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        pk = az.InferenceData(posterior=models.pk_posterior.unstack("sample"))
        pk.posterior.attrs.update(spec_sha256=models.pk_spec.sha256, model=models.pk_spec.name)
        resp = az.InferenceData(
            posterior=models.resp_posterior.unstack("sample"), constant_data=models.resp_const
        )
        resp.posterior.attrs.update(
            spec_sha256=models.resp_spec.sha256, model=models.resp_spec.name
        )
        save_idata(pk, run / "pk" / models.pk_spec.name / "posterior.nc")
        save_idata(resp, run / "response" / models.resp_spec.name / "posterior.nc")
        for fit in (f"pk/{models.pk_spec.name}", f"response/{models.resp_spec.name}"):
            (run / fit / "gate.json").write_text('{"gate_passed": true, "gate_failures": []}')
        (tmp / "config.yaml").write_text(
            f"models: {{dir: {ROOT / 'models'}, pk: [{models.pk_spec.name}], "
            f"response: [{models.resp_spec.name}]}}\n"
            f"dosing: {{pk_draws: {config['dosing']['pk_draws']}}}\n"
        )
        example = pd.read_csv(ROOT / "data" / "new_patients.csv", dtype=str, keep_default_na=False)
        rows = example.iloc[np.arange(n) % len(example)].reset_index(drop=True)
        rows["ID"] = [f"{i}-{k // len(example):04d}" for k, i in enumerate(rows["ID"])]
        rows.to_csv(tmp / "patients.csv", index=False)
        cmd = [
            sys.executable, "-m", "ketamine_pmx.cli", "recommend", "--patients",
            str(tmp / "patients.csv"), "--run", str(run), "--config", str(tmp / "config.yaml"),
            "--out", str(tmp / "out"), *extra,
        ]  # fmt: skip
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        out = tmp / "out"
        files = {
            "figures": len(list(out.glob("patients/*.png"))),
            "summaries": len(list(out.glob("patients/*.md"))),
        }
    return {
        "patients": n,
        "best_s": round(min(times), 2),
        "times_s": [round(t, 2) for t in times],
        **files,
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="append a CSV row here")
    ap.add_argument("--cli", action="store_true", help="time `ketamine-pmx recommend` instead")
    ap.add_argument("extra", nargs="*", help="after --: options of `ketamine-pmx recommend`")
    args = ap.parse_args()
    os.chdir(ROOT)
    config = load_config(
        "config/config.yaml", {"simulation": {"arms": {"MDD": 2, "CRPS_OUT": 1, "CRPS_IN": 1}}}
    )
    population = simulate_trial(config).population
    pk_spec = load_pk_spec("models/pk_2cmt_metab.yaml")
    resp_spec = load_response_spec("models/response_full.yaml")
    cfg = config["dosing"]
    n_draws = cfg["pk_draws"]
    models = make_models(
        pk_spec,
        oracle_pk_posterior(population, pk_spec, 4000, jitter=0.03, seed=0),
        resp_spec,
        *oracle_response(population, resp_spec, 4000),
        config["response"]["endpoints"],
    )
    if args.cli:
        row = _cli(models, config, args.patients, args.repeat, args.extra)
        row["machine"] = f"{os.cpu_count()} cpu, {platform.python_version()}"
        row["command"] = "python benchmarks/dosing_speed.py " + " ".join(sys.argv[1:])
        print(json.dumps(row, indent=2))
        return
    params = load_parameters(config["simulation"]["parameters"])
    share = {"MDD": 0.5, "CRPS_OUT": 0.3, "CRPS_IN": 0.2}
    arms = {a: round(args.patients * f) for a, f in share.items()}
    subj = draw_subjects(
        params, arms, config["simulation"]["population_mix"], np.random.default_rng(1)
    )
    patients = pd.DataFrame(
        {
            "ID": subj["ID"].astype(str),
            "INDICATION": subj["INDICATION"],
            "WT": subj["WT"].astype(float),
            "CYP2B6_CLASS": subj["CYP2B6_CLASS"],
            "DSER": subj["DSER"].astype(float),
            "MG": subj["MG"].astype(float),
            "SETTING": subj["ARM"].map({"CRPS_IN": "inpatient"}).fillna("outpatient"),
        }
    )
    times = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        result = recommend(models, patients, cfg, seed=r)
        times.append(time.perf_counter() - t0)
    row = {
        "patients": len(patients),
        "regimens_in_grid": len(regimen_grid(cfg)),
        "candidates_evaluated": len(result.regimens),
        "pk_draws": n_draws,
        "best_s": round(min(times), 2),
        "per_patient_ms": round(1000 * min(times) / len(patients), 2),
        "machine": f"{os.cpu_count()} cpu, {platform.python_version()}",
        "command": "python benchmarks/dosing_speed.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(row, indent=2))
    if args.out:
        frame = pd.DataFrame([row])
        frame.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)


if __name__ == "__main__":
    main()
