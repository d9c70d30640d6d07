"""Glue: rule exposures -> ketamine_pmx.exposure (draws, per-patient summary, figure)."""

import sys

from ketamine_pmx.data import read_clean, subject_strata
from ketamine_pmx.exposure import exposure_draws, save_exposures, summarise_exposures
from ketamine_pmx.inference import load_idata
from ketamine_pmx.io import write_csv, write_figure, write_text
from ketamine_pmx.models import load_pk_spec
from ketamine_pmx.pages import table_page
from ketamine_pmx.plots import exposure_overview

sys.stderr = open(snakemake.log[0], "w", buffering=1)

cfg = snakemake.params.config
spec = load_pk_spec(snakemake.input.spec)
idata = load_idata(snakemake.input.posterior, spec)
table = read_clean(snakemake.input.data)
ds = exposure_draws(
    spec,
    idata,
    table,
    cfg["response"],
    cfg["exposures"]["draws"],
    cfg["exposures"]["cmax_offsets_h"],
)
save_exposures(ds, snakemake.output.draws)
summary = summarise_exposures(ds)
write_csv(snakemake.output.summary, summary, float_format="%.6g")
write_text(
    snakemake.output.summary_page,
    table_page(
        summary, f"Exposures per patient ({spec.name}): median, 90% interval", float_format="%.4g"
    ),
)
groups = subject_strata(table)
metrics = [m for m in ("AUC_KET", "AUC_NK", "AUC_HNK", "CMAX_KET") if m in ds["metric"]]
write_figure(snakemake.output.figure, exposure_overview(summary, groups, metrics))
print(
    f"{spec.name}: exposures of {ds.sizes['subject']} patients from {ds.attrs['draws_used']} draws",
    file=sys.stderr,
)
