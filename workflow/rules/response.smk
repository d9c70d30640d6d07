# Stage 3: exposure -> response. Per-patient exposure draws from the reference PK model, the
# exposure-biomarker-response models, their PSIS-LOO comparison (and the PK models'), and the
# headline table of biomarker effects. Each response model's gate is enforced as the PK models'
# (gate_response, on the kept diagnostics.csv and gate.json of fit_response).


rule exposures:
    input:
        data=rules.validate_data.output.clean,
        posterior=f"{RESULTS}/pk/{REFERENCE_PK}/posterior.nc",
        gate=f"{RESULTS}/pk/{REFERENCE_PK}/gate_check.json",
        spec=repo_path(os.path.join(config["models"]["dir"], f"{REFERENCE_PK}.yaml")),
    output:
        draws=f"{RESULTS}/exposure/exposures.nc",
        summary=f"{RESULTS}/exposure/exposure_summary.csv",
        summary_page=report(
            f"{RESULTS}/exposure/exposure_summary.html",
            caption="../report/exposure_summary.rst",
            category="3. Exposures",
        ),
        figure=report(
            f"{RESULTS}/exposure/exposures.png",
            caption="../report/exposure_plot.rst",
            category="3. Exposures",
        ),
    log:
        f"{RESULTS}/logs/exposures.log",
    benchmark:
        f"{RESULTS}/benchmarks/exposures.tsv"
    threads: rule_resources("exposures").get("threads", 1)
    resources:
        mem_mb=rule_resources("exposures").get("mem_mb", 4000),
        runtime=rule_resources("exposures").get("runtime", 30),
    params:
        config=config_for("response", "exposures"),
    script:
        "../scripts/exposures.py"


rule fit_response:
    input:
        data=rules.validate_data.output.clean,
        exposures=rules.exposures.output.summary,
        spec=get_response_spec,
    output:
        posterior=f"{RESULTS}/response/{{resp_model}}/posterior.nc",
        diagnostics=f"{RESULTS}/response/{{resp_model}}/diagnostics.csv",
        gate=f"{RESULTS}/response/{{resp_model}}/gate.json",
    log:
        f"{RESULTS}/logs/fit_response/{{resp_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_response/{{resp_model}}.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=rule_resources("fit_response").get("mem_mb", 4000),
        runtime=rule_resources("fit_response").get("runtime", 30),
    params:
        config={**config_for("response", "seeds.fit_response"), "gate": GATE_THRESHOLDS},
        sampler=sampler_settings(config, "response"),
    script:
        "../scripts/fit_response.py"


rule gate_response:
    input:
        table=rules.fit_response.output.diagnostics,
        gate=rules.fit_response.output.gate,
    output:
        check=f"{RESULTS}/response/{{resp_model}}/gate_check.json",
        page=report(
            f"{RESULTS}/response/{{resp_model}}/diagnostics.html",
            caption="../report/response_diagnostics.rst",
            category="6. Response checks",
            subcategory="{resp_model}",
        ),
    log:
        f"{RESULTS}/logs/gate_response/{{resp_model}}.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        gate=config["gate"],
    script:
        "../scripts/enforce_gate.py"


rule compare_models:
    input:
        data=rules.validate_data.output.clean,
        exposures=rules.exposures.output.summary,
        response=expand(
            rules.fit_response.output.posterior,
            resp_model=config["models"]["response"],
        ),
        response_specs=[get_response_spec(m) for m in config["models"]["response"]],
        pk=expand(
            f"{RESULTS}/pk/{{pk_model}}/posterior.nc", pk_model=config["models"]["pk"]
        ),
    output:
        responder=f"{RESULTS}/compare/response_responder.csv",
        responder_page=report(
            f"{RESULTS}/compare/response_responder.html",
            caption="../report/compare_table.rst",
            category="4. Model comparison",
        ),
        pct_change=f"{RESULTS}/compare/response_pct_change.csv",
        pct_change_page=report(
            f"{RESULTS}/compare/response_pct_change.html",
            caption="../report/compare_table.rst",
            category="4. Model comparison",
        ),
        pk=f"{RESULTS}/compare/pk.csv",
        pk_page=report(
            f"{RESULTS}/compare/pk.html",
            caption="../report/compare_pk.rst",
            category="4. Model comparison",
        ),
        pareto_k=f"{RESULTS}/compare/pareto_k.csv",
        figure_responder=report(
            f"{RESULTS}/compare/response_responder.png",
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
        figure_pct_change=report(
            f"{RESULTS}/compare/response_pct_change.png",
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
        figure_pk=report(
            f"{RESULTS}/compare/pk.png",
            caption="../report/compare_plot.rst",
            category="4. Model comparison",
        ),
    log:
        f"{RESULTS}/logs/compare_models.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare_models.tsv"
    threads: config["sampler"]["cores"]
    resources:
        mem_mb=rule_resources("compare_models").get("mem_mb", 8000),
        runtime=rule_resources("compare_models").get("runtime", 60),
    params:
        config=config_for("response", "seeds.fit_response", "comparison", "models"),
        sampler=sampler_settings(config, "response"),
    script:
        "../scripts/compare_models.py"


rule biomarker_effects:
    input:
        response=expand(
            rules.fit_response.output.posterior,
            resp_model=config["models"]["response"],
        ),
        response_specs=[get_response_spec(m) for m in config["models"]["response"]],
        truth=get_truth_population,
        truth_subjects=get_truth_subjects,
    output:
        table=f"{RESULTS}/effects/biomarker_effects.csv",
        table_page=report(
            f"{RESULTS}/effects/biomarker_effects.html",
            caption="../report/biomarker_effects.rst",
            category="5. Biomarker effects",
        ),
        forest_responder=report(
            f"{RESULTS}/effects/forest_responder.png",
            caption="../report/forest.rst",
            category="5. Biomarker effects",
        ),
        forest_pct_change=report(
            f"{RESULTS}/effects/forest_pct_change.png",
            caption="../report/forest.rst",
            category="5. Biomarker effects",
        ),
        recovery=f"{RESULTS}/effects/recovery.csv",
        recovery_page=report(
            f"{RESULTS}/effects/recovery.html",
            caption="../report/recovery.rst",
            category="5. Biomarker effects",
        ),
    log:
        f"{RESULTS}/logs/biomarker_effects.log",
    threads: 1
    resources:
        mem_mb=rule_resources("biomarker_effects").get("mem_mb", 2000),
        runtime=rule_resources("biomarker_effects").get("runtime", 10),
    params:
        models=config["models"]["response"],
    script:
        "../scripts/biomarker_effects.py"
