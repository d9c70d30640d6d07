"""Glue: rule fit_pk -> ketamine_pmx.inference.fit_pk."""

import sys

from ketamine_pmx.data import read_clean
from ketamine_pmx.inference import fit_pk, run_timings, save_idata
from ketamine_pmx.models import load_pk_spec

sys.stderr = open(snakemake.log[0], "w", buffering=1)

spec = load_pk_spec(snakemake.input.spec)
table = read_clean(snakemake.input.data)
sampler, seed = dict(snakemake.params.sampler), int(snakemake.params.seed)
idata, data = fit_pk(table, spec, sampler, seed, source=snakemake.input.data)
print(f"timings (s): {run_timings(idata)}", file=sys.stderr)
save_idata(idata, snakemake.output.posterior)
print(f"{spec.name}: {len(data.subjects)} subjects, {len(data.obs)} observations", file=sys.stderr)
