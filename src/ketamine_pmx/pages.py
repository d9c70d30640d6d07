"""Self-contained HTML pages of result tables, for the workflow's report.

The Snakemake report displays HTML items in the page and offers any other file (CSV, Markdown)
only as a download, so every table the report shows is written twice: the CSV for machines and
an HTML page (inline style, no scripts, no external resources) for readers. Markdown is
converted by a small converter of the subset the project writes: headings, paragraphs, bullet
lists, pipe tables, ``**bold**``, ``*italic*`` and ``code``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f2f2f2; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
.notice { padding: 0.5em 0.8em; margin: 0.6em 0; border-left: 5px solid; }
.passed { border-color: #2e7d32; background: #edf7ed; }
.allowed { border-color: #e65100; background: #fff3e0; }
.failed { border-color: #b71c1c; background: #fdecea; }
.note { border-color: #1565c0; background: #e8f0fb; }
"""


def page(title: str, body: str) -> str:
    """An HTML document around ``body`` (already HTML) with the shared style."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def table_html(frame: pd.DataFrame, float_format: str = "%.4g") -> str:
    """A table as an HTML ``<table>`` (missing values blank, numbers in ``float_format``)."""
    return frame.to_html(
        index=False,
        na_rep="",
        float_format=lambda v: float_format % v,
        border=0,
        escape=True,
    )


def table_page(frame: pd.DataFrame, title: str, intro: str = "", float_format: str = "%.4g") -> str:
    """A page with one table, after ``intro`` (HTML, e.g. from :func:`notice`)."""
    return page(title, intro + table_html(frame, float_format))


def csv_page(path: str | Path, title: str, intro: str = "", float_format: str = "%.4g") -> str:
    """The page of a CSV as the workflow writes it ("." for missing values, IDs as text)."""
    frame = pd.read_csv(path, na_values=["."], dtype={"ID": str})
    return table_page(frame, title, intro, float_format)


_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
)


def _inline(text: str) -> str:
    out = html.escape(text.strip(), quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(cells: list[str], tag: str) -> str:
    return "<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>"


_BULLET = re.compile(r"^\s*[-*]\s+")


def markdown_html(text: str) -> str:
    """HTML of the Markdown subset the project writes (see the module docstring)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(_cells(lines[i]))
                i += 1
            rule = len(block) > 1 and all(re.fullmatch(r":?-{3,}:?", c) for c in block[1])
            head, body = (block[0], block[2:]) if rule else ([], block)
            rows = [_row(head, "th")] if head else []
            rows += [_row(r, "td") for r in body]
            out.append("<table>\n" + "\n".join(rows) + "\n</table>")
        elif _BULLET.match(line):
            items = []
            while i < len(lines) and _BULLET.match(lines[i]):
                items.append(f"<li>{_inline(_BULLET.sub('', lines[i]))}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not re.match(r"(#{1,6}\s|\s*\||\s*[-*]\s+)", lines[i])
            ):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def markdown_page(text: str, title: str, intro: str = "") -> str:
    """A page of a Markdown document after ``intro`` (HTML); the document's own first-level
    heading, if it opens with one, is the page's title."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        title, text = lines[0][2:].strip(), "\n".join(lines[1:])
    return page(title, intro + markdown_html(text))


def notice(kind: str, heading: str, items: list[str] = (), text: str = "") -> str:
    """A coloured box (``kind``: passed, allowed, failed or note) with a heading, text and a
    list."""
    listed = "".join(f"<li>{html.escape(i)}</li>" for i in items)
    return (
        f'<div class="notice {kind}"><strong>{html.escape(heading)}</strong>'
        + (f"<p>{html.escape(text)}</p>" if text else "")
        + (f"<ul>{listed}</ul>" if listed else "")
        + "</div>\n"
    )


def gate_notice(check: dict[str, Any]) -> str:
    """The diagnostic gate's result of one model (a gate check, see ``enforce_gate``): passed,
    or failed with its failures and whether the config let the run go on."""
    model = check["model"]
    failures = list(check.get("gate_failures", []))
    if check["gate_passed"]:
        return notice("passed", f"Diagnostic gate passed for {model}.")
    if check["allowed_past_failed_gate"]:
        return notice(
            "allowed",
            f"Diagnostic gate FAILED for {model}; the run went on because the config allows it "
            f"({check['allowed_by']}).",
            failures,
            "Every result computed from this model rests on a posterior that did not pass the "
            "convergence checks: read it as a test of the workflow, not as a result. Rerun "
            "with more draws or a better-conditioned model before using it.",
        )
    return notice("failed", f"Diagnostic gate FAILED for {model}; the run stopped here.", failures)


__all__ = [
    "csv_page",
    "gate_notice",
    "markdown_html",
    "markdown_page",
    "notice",
    "page",
    "table_html",
    "table_page",
]
