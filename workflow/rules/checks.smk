# Stage 4: posterior predictive checks. VPC and prediction-corrected VPC, goodness of fit and
# random-effect diagnostics of every PK model, each figure with its numeric twin.


rule ppc_pk:
    input:
        data=rules.validate_data.output.clean,
        posterior=rules.fit_pk.output.posterior,
        spec=get_pk_spec,
    output:
        vpc=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/vpc.png",
            caption="../report/vpc.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        pcvpc=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/pcvpc.png",
            caption="../report/pcvpc.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        vpc_table=f"{RESULTS}/checks/pk/{{pk_model}}/vpc.csv",
        vpc_summary=f"{RESULTS}/checks/pk/{{pk_model}}/vpc_summary.csv",
        vpc_summary_page=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/vpc_summary.html",
            caption="../report/vpc_summary.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        gof=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/gof.png",
            caption="../report/gof.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        gof_table=f"{RESULTS}/checks/pk/{{pk_model}}/gof.csv",
        gof_summary=f"{RESULTS}/checks/pk/{{pk_model}}/gof_summary.csv",
        gof_summary_page=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/gof_summary.html",
            caption="../report/gof_summary.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        etas=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/eta_covariates.png",
            caption="../report/eta_covariates.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        eta_summary=f"{RESULTS}/checks/pk/{{pk_model}}/eta_covariates.csv",
        eta_summary_page=report(
            f"{RESULTS}/checks/pk/{{pk_model}}/eta_covariates.html",
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
        mem_mb=rule_resources("ppc_pk").get("mem_mb", 4000),
        runtime=rule_resources("ppc_pk").get("runtime", 30),
    params:
        config=config_for("checks", "seeds.ppc"),
    script:
        "../scripts/ppc_pk.py"


rule ppc_response:
    input:
        posterior=rules.fit_response.output.posterior,
        exposures=rules.exposures.output.summary,
    output:
        groups=report(
            f"{RESULTS}/checks/response/{{resp_model}}/response_groups.png",
            caption="../report/response_groups.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        groups_pct=report(
            f"{RESULTS}/checks/response/{{resp_model}}/pct_change_groups.png",
            caption="../report/pct_change_groups.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        groups_table=f"{RESULTS}/checks/response/{{resp_model}}/response_groups.csv",
        groups_page=report(
            f"{RESULTS}/checks/response/{{resp_model}}/response_groups.html",
            caption="../report/response_groups_table.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        calibration=report(
            f"{RESULTS}/checks/response/{{resp_model}}/calibration.png",
            caption="../report/calibration.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        calibration_table=f"{RESULTS}/checks/response/{{resp_model}}/calibration.csv",
        loo_pit=report(
            f"{RESULTS}/checks/response/{{resp_model}}/loo_pit.png",
            caption="../report/loo_pit.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
        loo_pit_table=f"{RESULTS}/checks/response/{{resp_model}}/loo_pit.csv",
    log:
        f"{RESULTS}/logs/ppc_response/{{resp_model}}.log",
    threads: 1
    resources:
        mem_mb=rule_resources("ppc_response").get("mem_mb", 2000),
        runtime=rule_resources("ppc_response").get("runtime", 10),
    params:
        metric="AUC_HNK",
    script:
        "../scripts/ppc_response.py"
