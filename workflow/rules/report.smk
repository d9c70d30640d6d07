# Report pages of the dosing stage's tables: the report shows HTML in the page and offers CSV
# and Markdown only as downloads, so each table it shows is also written as a page (the CSV and
# Markdown files stay for machines). The recommendations' pages open with the diagnostic gate's
# result of the reference models, which says when the config let a failed gate through.


rule dosing_pages:
    input:
        recommendations=rules.recommend_doses.output.recommendations,
        summary=rules.recommend_doses.output.summary,
        gates=get_reference_gates,
    output:
        recommendations=report(
            result_path("dosing_pages", "recommendations"),
            caption="../report/recommendations.rst",
            category="7. Dosing",
        ),
        summary=report(
            result_path("dosing_pages", "summary"),
            caption="../report/recommendations_summary.rst",
            category="7. Dosing",
        ),
    log:
        f"{RESULTS}/logs/dosing/pages.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        titles={
            "recommendations": "Dose recommendations",
            "summary": "Dose recommendations",
        },
    script:
        "../scripts/table_pages.py"


rule trial_page:
    input:
        summary=rules.dosing_trial.output.summary,
        gates=get_reference_gates,
    output:
        summary=report(
            result_path("trial_page", "summary"),
            caption="../report/dosing_trial.rst",
            category="7. Dosing",
        ),
    log:
        f"{RESULTS}/logs/dosing/trial_page.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        titles={"summary": "Virtual trial: model-guided against standard dosing"},
    script:
        "../scripts/table_pages.py"
