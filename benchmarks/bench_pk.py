"""Time one compiled value + gradient evaluation of the exact PK solution (ketamine_pmx.pk).

The layout is the virtual trial's design: 210 subjects (120 with one 40-min infusion of
0.5 mg/kg and 9 samples, 60 with 10 daily 4-h infusions titrated 10 -> 15 -> 20 mg/h and 5
samples, 30 with 5 back-to-back 24-h infusions titrated 10 -> 40 mg/h and 6 samples); each
sample is observed for 2 enantiomer chains x 3 levels (ketamine, norketamine, HNK). The timed
function returns sum(log C) over all observations and its gradient with respect to eight
per-subject parameter vectors per chain, the way a sampler calls it. The same graph built with
the textbook (unsafe) formula is timed for comparison.

Usage: python benchmarks/bench_pk.py [--repeat N]
Prints a Markdown table; results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytensor
import pytensor.tensor as pt

from ketamine_pmx.contract import MOLAR_MASS_G_MOL
from ketamine_pmx.pk import Metabolite, build_layout, np_conc_ng_ml, pt_conc_ng_ml

PARAMETER_NAMES = ("cl", "vc", "q", "vp", "cl_f", "cl_nk", "fm_hnk", "cl_hnk")
TYPICAL = {
    "S": {"cl": 85.0, "vc": 110.0, "q": 130.0, "vp": 190.0, "cl_nk": 70.0, "cl_hnk": 35.0},
    "R": {"cl": 74.0, "vc": 100.0, "q": 120.0, "vp": 170.0, "cl_nk": 60.0, "cl_hnk": 20.0},
}
V_NK, V_HNK = 250.0, 115.0


def trial_design(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Dose and sample records of the 210-subject design (racemate: half per enantiomer)."""
    doses: list[tuple[int, float, float, float]] = []  # subject, time, amt, rate (per chain)
    samples: list[tuple[int, float]] = []
    subject = 0
    for _ in range(120):  # MDD: one 40-min infusion of 0.5 mg/kg
        amt = 0.5 * rng.uniform(55.0, 100.0)
        doses.append((subject, 0.0, amt / 2, amt / 2 / (40.0 / 60.0)))
        for t in (0.33, 0.67, 1.0, 1.5, 2.0, 4.0, 8.0, 24.0, 72.0):
            samples.append((subject, t * np.exp(0.05 * rng.standard_normal())))
        subject += 1
    for _ in range(60):  # CRPS outpatients: 10 daily 4-h infusions, 10 -> 15 -> 20 mg/h
        for day in range(10):
            rate = min(20.0, 10.0 + 5.0 * day)
            doses.append((subject, 24.0 * day, rate * 4.0 / 2, rate / 2))
        for t in (2.0, 4.0, 24.0 * 4 + 3.9, 24.0 * 9 + 3.9, 24.0 * 9 + 24.0):
            samples.append((subject, t))
        subject += 1
    for _ in range(30):  # CRPS inpatients: 5 back-to-back 24-h infusions, 10 -> 40 mg/h
        for day in range(5):
            rate = min(40.0, 10.0 + 10.0 * day)
            doses.append((subject, 24.0 * day, rate * 24.0 / 2, rate / 2))
        for t in (12.0, 36.0, 60.0, 84.0, 119.0, 126.0):
            samples.append((subject, t))
        subject += 1
    d = np.array(doses)
    s = np.array(samples)
    return {
        "dose_subject": d[:, 0].astype(int),
        "dose_time_h": d[:, 1],
        "dose_amt_mg": d[:, 2],
        "dose_rate_mg_h": d[:, 3],
        "obs_subject": np.repeat(s[:, 0].astype(int), 3),
        "obs_time_h": np.repeat(s[:, 1], 3),
        "obs_level": np.tile(np.arange(3), len(s)),
        "n_subject": subject,
    }


def chain_parameters(values: dict[str, object], enantiomer: str) -> dict[str, object]:
    """Keyword arguments of pt/np_conc_ng_ml for one enantiomer chain."""
    r_nk = MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"]
    r_hnk = MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"]
    return {
        "cl": values["cl"],
        "vc": values["vc"],
        "q": values["q"],
        "vp": values["vp"],
        "metabolites": (
            Metabolite(cl_m=values["cl_nk"], v_m=V_NK, r=r_nk, cl_f=values["cl_f"]),
            Metabolite(cl_m=values["cl_hnk"], v_m=V_HNK, r=r_hnk, fm=values["fm_hnk"]),
        ),
    }


def point(n_subject: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for e, typ in TYPICAL.items():
        vals = {k: v * np.exp(0.25 * rng.standard_normal(n_subject)) for k, v in typ.items()}
        vals["cl_f"] = 0.8 * vals["cl"]
        vals["fm_hnk"] = np.full(n_subject, 0.75)
        out[e] = vals
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(20240611)
    design = trial_design(rng)
    layout = build_layout(**design)
    values = point(layout.n_subject, rng)
    inputs = {e: {k: pt.dvector(f"{e}_{k}") for k in PARAMETER_NAMES} for e in TYPICAL}
    flat_inputs = [v for e in TYPICAL for v in inputs[e].values()]
    flat_values = [values[e][k] for e in TYPICAL for k in PARAMETER_NAMES]
    print(
        f"layout: {layout.n_subject} subjects, {layout.n_obs} observations per chain, "
        f"{layout.n_terms} (observation, dose) terms per chain "
        + str({k: len(v) for k, v in layout.terms.items()})
    )
    print()
    print("| formula | compile (s) | value + gradient (ms, best of N) | value only (ms) |")
    print("|---|---|---|---|")
    for method in ("stable", "naive"):
        t0 = time.perf_counter()
        logp = sum(
            pt.log(pt_conc_ng_ml(layout, **chain_parameters(inputs[e], e), method=method)).sum()
            for e in TYPICAL
        )
        grads = pytensor.grad(logp, flat_inputs)
        f_grad = pytensor.function(flat_inputs, [logp, *grads])
        f_val = pytensor.function(flat_inputs, logp)
        f_grad(*flat_values)
        f_val(*flat_values)
        compile_s = time.perf_counter() - t0
        timings, timings_val = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            f_grad(*flat_values)
            timings.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            f_val(*flat_values)
            timings_val.append(time.perf_counter() - t0)
        ref = sum(
            np.log(np_conc_ng_ml(layout, **chain_parameters(values[e], e))).sum() for e in TYPICAL
        )
        assert np.isclose(f_val(*flat_values), ref, rtol=1e-10), method
        print(
            f"| {method} | {compile_s:.1f} | {1000 * min(timings):.1f} | "
            f"{1000 * min(timings_val):.1f} |"
        )


if __name__ == "__main__":
    main()
