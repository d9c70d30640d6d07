# Stage 4: posterior predictive checks. VPC and prediction-corrected VPC, goodness of fit and
# random-effect diagnostics of every PK model, each figure with its numeric twin; observed
# against predicted response by group (the exposure groups by the reference response model's
# exposure metric, the same for every model), calibration and LOO-PIT of every response model.


rule ppc_pk:
    input:
        data=rules.validate_data.output.clean,
        posterior=rules.fit_pk.output.posterior,
        spec=get_pk_spec,
    output:
        vpc=report(
            result_path("ppc_pk", "vpc"),
            caption="../report/vpc.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        pcvpc=report(
            result_path("ppc_pk", "pcvpc"),
            caption="../report/pcvpc.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        vpc_table=result_path("ppc_pk", "vpc_table"),
        vpc_summary=result_path("ppc_pk", "vpc_summary"),
        vpc_summary_page=report(
            result_path("ppc_pk", "vpc_summary_page"),
            caption="../report/vpc_summary.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        gof=report(
            result_path("ppc_pk", "gof"),
            caption="../report/gof.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        gof_table=result_path("ppc_pk", "gof_table"),
        gof_summary=result_path("ppc_pk", "gof_summary"),
        gof_summary_page=report(
            result_path("ppc_pk", "gof_summary_page"),
            caption="../report/gof_summary.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        etas=report(
            result_path("ppc_pk", "etas"),
            caption="../report/eta_covariates.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        eta_summary=result_path("ppc_pk", "eta_summary"),
        eta_summary_page=report(
            result_path("ppc_pk", "eta_summary_page"),
            caption="../report/eta_covariates_table.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
    log:
        f"{RESULTS}/logs/ppc_pk/{{pk_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ppc_pk/{{pk_model}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=config_for("checks", "seeds.ppc"),
    script:
        "../scripts/ppc_pk.py"


rule ppc_response:
    input:
        posterior=rules.fit_response.output.posterior,
        exposures=rules.exposures.output.summary,
        reference_spec=get_reference_response_spec,
    output:
        groups=report(
            result_path("ppc_response", "groups"),
            caption="../report/response_groups.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        groups_pct=report(
            result_path("ppc_response", "groups_pct"),
            caption="../report/pct_change_groups.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        groups_table=result_path("ppc_response", "groups_table"),
        groups_page=report(
            result_path("ppc_response", "groups_page"),
            caption="../report/response_groups_table.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        calibration=report(
            result_path("ppc_response", "calibration"),
            caption="../report/calibration.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        calibration_table=result_path("ppc_response", "calibration_table"),
        loo_pit=report(
            result_path("ppc_response", "loo_pit"),
            caption="../report/loo_pit.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        loo_pit_table=result_path("ppc_response", "loo_pit_table"),
    log:
        f"{RESULTS}/logs/ppc_response/{{resp_model}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/ppc_response.py"
