# Stage 2: population PK. Fit each configured model, then diagnose it and gate the run on the
# diagnostics (R-hat, ESS, divergences, E-BFMI).


rule fit_pk:
    input:
        data=rules.validate_data.output.clean,
        spec=get_pk_spec,
    output:
        posterior=f"{RESULTS}/pk/{{pk_model}}/posterior.nc",
    log:
        f"{RESULTS}/logs/fit_pk/{{pk_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_pk/{{pk_model}}.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=rule_resources("fit_pk").get("mem_mb", 8000),
        runtime=rule_resources("fit_pk").get("runtime", 120),
    params:
        sampler=sampler_settings(config, "pk"),
        seed=config["seeds"]["fit_pk"],
    script:
        "../scripts/fit_pk.py"


rule diagnose_pk:
    input:
        posterior=rules.fit_pk.output.posterior,
    output:
        table=report(
            f"{RESULTS}/pk/{{pk_model}}/diagnostics.csv",
            caption="../report/pk_diagnostics.rst",
            category="2. PK diagnostics and VPCs",
            subcategory="{pk_model}",
        ),
        gate=f"{RESULTS}/pk/{{pk_model}}/gate.json",
    log:
        f"{RESULTS}/logs/diagnose_pk/{{pk_model}}.log",
    threads: 1
    resources:
        mem_mb=rule_resources("diagnose_pk").get("mem_mb", 4000),
        runtime=rule_resources("diagnose_pk").get("runtime", 10),
    params:
        gate=config["gate"],
    script:
        "../scripts/diagnose_pk.py"
