"""Provenance of data/new_patients_concentrations.csv: test-dose concentrations of two of the
example patients in data/new_patients.csv, simulated from the virtual trial's parameter file.

Each patient gets 0.1 mg/kg racemic ketamine over 40 min (a test dose) and samples at 0.67,
1, 2, 4 and 8 h of the six analytes, with the simulator's residual error and LLOQs (BLQ rows
marked). Run from the repository root: ``python data/make_new_patients_concentrations.py``.
"""

import numpy as np
import pandas as pd

from ketamine_pmx.contract import EVID_DOSE, EVID_OBSERVATION
from ketamine_pmx.simulate import (
    PK_ANALYTES,
    Dose,
    draw_pk_parameters,
    integrate_pk,
    load_parameters,
    observe_concentrations,
)

SEED = 20261122
PATIENTS = ["MDD-03", "CRPS-02"]
TIMES = np.array([0.6667, 1.0, 2.0, 4.0, 8.0])


def main() -> None:
    params = load_parameters("data/truth/ketamine_virtual_trial.yaml")
    patients = pd.read_csv("data/new_patients.csv", dtype={"ID": str})
    cls = {"*1/*1": "NM", "*1/*6": "IM", "*6/*6": "PM"}
    subj = patients[patients["ID"].isin(PATIENTS)].assign(
        CYP2B6_CLASS=lambda d: d["CYP2B6"].map(cls)
    )
    rng = np.random.default_rng(SEED)
    ind_pk = draw_pk_parameters(params, subj.reset_index(drop=True), rng)
    rows = []
    for i, (_, p) in enumerate(subj.iterrows()):
        amt = round(0.1 * p["WT"], 2)
        dose = Dose(0.0, amt, amt / 0.6667, "KET")
        sol = integrate_pk(ind_pk.iloc[i].to_dict(), [dose], TIMES, params["molar_mass_g_mol"])
        at = {float(t): j for j, t in enumerate(sol.times)}
        conc = sol.conc[[at[float(t)] for t in TIMES]]
        dv, blq, lloq = observe_concentrations(conc, params, rng)
        rows.append(
            {
                "ID": p["ID"],
                "TIME": 0.0,
                "EVID": EVID_DOSE,
                "AMT": amt,
                "RATE": round(amt / 0.6667, 4),
                "ANALYTE": "KET",
                "DV": "",
                "BLQ": "",
                "LLOQ": "",
            }
        )
        for j, t in enumerate(TIMES):
            for k, a in enumerate(PK_ANALYTES):
                rows.append(
                    {
                        "ID": p["ID"],
                        "TIME": t,
                        "EVID": EVID_OBSERVATION,
                        "AMT": "",
                        "RATE": "",
                        "ANALYTE": a,
                        "DV": dv[j, k],
                        "BLQ": int(blq[j, k]),
                        "LLOQ": lloq[j, k],
                    }
                )
    pd.DataFrame(rows).to_csv("data/new_patients_concentrations.csv", index=False)


if __name__ == "__main__":
    main()
