"""Report pages: tables and the project's Markdown as self-contained HTML, gate results."""

from __future__ import annotations

import re

import pandas as pd

from ketamine_pmx.pages import csv_page, gate_notice, markdown_html, markdown_page, table_page


def test_a_csv_becomes_a_table_with_its_missing_values_blank(tmp_path):
    path = tmp_path / "rec.csv"
    path.write_text("ID,P_RESPONSE,REASON\n007,0.51234,a <b> & c\nA/1,.,none\n")
    page = csv_page(path, "Dose recommendations")
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert "<th>ID</th>" in page and "<td>007</td>" in page  # IDs stay text (leading zero)
    assert "<td>0.5123</td>" in page and "<td></td>" in page  # 4 significant digits; "." blank
    assert "a &lt;b&gt; &amp; c" in page  # escaped, never markup


def test_the_project_markdown_subset_becomes_html():
    text = (
        "# Dose recommendations\n\n*Research output, not medical advice.*\n\n"
        "12 patient(s); 2 flagged as **likely non-responders**.\n\n"
        "- MDD-01: `racemic`, 2*3 doses\n- CRPS-02\n\n"
        "| regimen | P(response) |\n|---|---|\n| racemic 0.5 mg/kg | 0.61 |\n| S 0.4 | 0.55 |\n"
    )
    body = markdown_html(text)
    assert "<h1>Dose recommendations</h1>" in body
    assert "<p><em>Research output, not medical advice.</em></p>" in body
    assert "<strong>likely non-responders</strong>" in body
    assert "<li>MDD-01: <code>racemic</code>, 2*3 doses</li>" in body  # a lone * stays a *
    assert "<th>P(response)</th>" in body and "<td>racemic 0.5 mg/kg</td>" in body
    assert len(re.findall("<tr>", body)) == 3  # the |---| rule is no row
    page = markdown_page(text, "ignored")
    assert "<title>Dose recommendations</title>" in page and page.count("<h1>") == 1


def test_gate_notice_says_when_a_failed_gate_was_let_through():
    check = {"model": "pk_2cmt_metab", "gate_passed": False, "gate_failures": ["R-hat 1.06 > 1.01"]}
    allowed = gate_notice(
        {**check, "allowed_past_failed_gate": True, "allowed_by": "gate.allow_failure"}
    )
    assert "FAILED for pk_2cmt_metab" in allowed and "gate.allow_failure" in allowed
    assert "R-hat 1.06 &gt; 1.01" in allowed and "not as a result" in allowed
    passed = gate_notice({**check, "gate_passed": True, "gate_failures": []})
    assert "passed" in passed and "FAILED" not in passed
    page = table_page(pd.DataFrame({"parameter": ["cl"], "r_hat": [1.06]}), "Diagnostics", allowed)
    assert page.index("FAILED") < page.index("<table")  # the gate's result comes first
