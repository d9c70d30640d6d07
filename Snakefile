# ketamine-pmx: Bayesian population PK/PD workflow for ketamine, its metabolites, D-serine and Mg.
# The Snakefile is a table of contents; the stages live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pk.smk"
include: "workflow/rules/response.smk"
include: "workflow/rules/checks.smk"
include: "workflow/rules/dosing.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
