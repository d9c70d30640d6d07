"""Parameter recovery of a PK fit of the virtual trial: truth vs posterior mean and 90% interval.

Usage (after the default workflow has run, or on any posterior of simulated data):

    python benchmarks/pk_recovery.py results/pk/pk_2cmt_metab/posterior.nc \\
        results/simulated/truth_population.json \\
        [--subjects results/simulated/truth_subjects.csv] [--out recovery.csv]

Prints the table and the share of true values inside their 90% intervals. With ``--subjects``
also the values realised in the trial's subjects (``simulate.sample_pk_truth``): a population
value is estimable from one trial only up to the chance in its subjects' effects, so those are
the reference for the method's own error.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from ketamine_pmx.checks import compare_with_truth
from ketamine_pmx.inference import load_idata
from ketamine_pmx.simulate import pk_truth, sample_pk_truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("posterior")
    p.add_argument("truth_population")
    p.add_argument("--subjects", help="truth_subjects.csv: add the trial's realised values")
    p.add_argument("--out")
    args = p.parse_args(argv)
    idata = load_idata(args.posterior)
    with open(args.truth_population, encoding="utf-8") as fh:
        population = json.load(fh)
    sample = None
    if args.subjects:
        sample = sample_pk_truth(population, pd.read_csv(args.subjects))
    table = compare_with_truth(idata, pk_truth(population), sample_truth=sample)
    if args.out:
        table.to_csv(args.out, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\n{table['inside'].sum()} of {len(table)} true values inside their 90% intervals")
    if sample is not None:
        n_in = table["inside_sample"].sum()
        print(f"{n_in} of {len(table)} values realised in the trial inside their 90% intervals")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
