"""Writing recommendations: tables, summaries, per-patient files and batches.

:func:`write_recommendation` writes ``recommendations.csv``, ``regimens.csv``, ``summary.md``,
``notes.json`` and each patient's summary (figures through a ``draw`` callable the caller
passes in, as computation never plots), with the caveats a reader must see beside the numbers
(:class:`Caveats`: the patients file's warnings and any reference model whose diagnostic gate
failed). Patient files are named by ID, made unique and
safe on every file system (:func:`patient_file_names`); an output folder that could overwrite
anything else is refused first (:func:`check_output_dir`). :func:`patient_batch` and
:func:`merge_batches` split a cohort into batches for cluster jobs and gather them into the
same files one run would have written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ketamine_pmx.data.validation import Problem
from ketamine_pmx.dosing.decision import Recommendation
from ketamine_pmx.dosing.fits import DosingError
from ketamine_pmx.layout import OUTPUTS

DISCLAIMER = (
    "Research output of a statistical model, not medical advice: the recommendation depends "
    "on the model's assumptions and on safety limits set by the user, and must not guide the "
    "treatment of a patient without clinical judgement."
)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: What :func:`write_recommendation` writes into its folder (replaced as a whole).
OUTPUT_ENTRIES = ("recommendations.csv", "regimens.csv", "summary.md", "notes.json", "patients")
#: Without ``figures``, :func:`write_recommendation` draws the per-patient figures of cohorts up
#: to this many patients: a figure costs about 0.15 s on 2 cores, the rest of a patient's
#: outputs a few milliseconds (benchmarks/README.md, dose recommendations).
FIGURES_AUTO_MAX = 100
#: Gate files of a fit, in the order they are looked for: the workflow's enforced gate check,
#: then the diagnostics' own gate (their names in the results layout).
GATE_FILES = tuple(
    Path(OUTPUTS[rule][name]).name for rule, name in (("gate_pk", "check"), ("diagnose_pk", "gate"))
)


@dataclass
class Caveats:
    """What a reader must see beside the numbers: the patients file's warnings (all of them,
    and by patient) and the reference models that did not pass their diagnostic gate (a
    failed gate the config let the run go past, or no gate file at all)."""

    warnings: list[str] = field(default_factory=list)
    patient_warnings: dict[str, list[str]] = field(default_factory=dict)
    gates: dict[str, list[str]] = field(default_factory=dict)  # model -> failed checks

    @classmethod
    def from_warnings(
        cls,
        problems: list[Problem],
        patients: pd.DataFrame,
        source: str | Path,
        gates: dict[str, list[str]] | None = None,
    ) -> Caveats:
        """Caveats of :func:`read_patients`'s warnings (each located by file line) and gates."""
        by_patient: dict[str, list[str]] = {}
        for p in problems:
            for line in p.lines:
                row = patients.iloc[line - 2]
                value = row.get(p.column, "")
                value = f"{value:g}" if isinstance(value, float) else str(value)
                text = f"{p.message}: {p.column} {value} ({source}, line {line})"
                by_patient.setdefault(str(row["ID"]), []).append(text)
        return cls([p.format(str(source)) for p in problems], by_patient, dict(gates or {}))

    def messages(self) -> list[str]:
        """Each warning and each failed gate as a line for stderr or a job's log."""
        return [f"warning: {w}" for w in self.warnings] + [
            f"warning: {m} did not pass the diagnostic gate: {'; '.join(f)}"
            for m, f in self.gates.items()
        ]

    def gate_text(self) -> str:
        """``passed``, or each model with its failed checks."""
        if not self.gates:
            return "passed"
        return " | ".join(f"{m} FAILED: {'; '.join(f)}" for m, f in self.gates.items())


def gate_failures(paths: dict[str, str | Path | None]) -> dict[str, list[str]]:
    """Failed checks by model, from each model's gate file (``gate_failures`` of gate.json or
    gate_check.json; a path may be a fit's folder, where :data:`GATE_FILES` are looked for). A
    model whose gate passed has no entry; one without a gate file is reported as unchecked."""

    out = {}
    for model, path in paths.items():
        path = Path(path) if path is not None else None
        if path is not None and path.is_dir():
            path = next((path / f for f in GATE_FILES if (path / f).is_file()), None)
        if path is None or not path.is_file():
            out[model] = ["no gate file (gate_check.json or gate.json): diagnostics not checked"]
            continue
        try:
            failures = [str(f) for f in json.loads(path.read_text("utf-8"))["gate_failures"]]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise DosingError(f"{path}: not a gate file of a fit ({exc!r})") from None
        if failures:
            out[model] = failures
    return out


def patient_file_names(ids: Any) -> dict[str, str]:
    """File name (without suffix) of each patient ID, unique and deterministic.

    Characters other than ASCII letters, digits, ``-`` and ``_`` become ``_`` (and the name is
    cut at 64 characters). When that changed the ID, or two IDs' names are equal ignoring case
    (they would be one file on a case-insensitive file system), the name gets ``.`` and the
    first 10 hex digits of the raw ID's SHA-256: ``A/1`` is ``A_1.<hash>``, and ``A_1``, which
    would collide with it, ``A_1.<hash of A_1>``. The ``.`` never occurs in a plain name, so a
    suffixed name cannot equal another patient's plain one.
    """

    ids = list(dict.fromkeys(map(str, ids)))
    stem = {i: re.sub(r"[^A-Za-z0-9_-]", "_", i)[:64] for i in ids}
    folded = pd.Series([s.casefold() for s in stem.values()]).value_counts()
    return {
        i: s
        if s == i and folded[s.casefold()] == 1
        else f"{s}.{hashlib.sha256(i.encode()).hexdigest()[:10]}"
        for i, s in stem.items()
    }


def check_output_dir(out: str | Path, inputs: list[str | Path | None]) -> None:
    """Refuse, before anything is computed, an output folder :func:`write_recommendation`
    must not replace: one that holds anything but its own outputs (another folder's files,
    e.g. the patients file's or a run's), one that holds an input, a path below a file, and
    a place that cannot be written (its nearest existing folder is tried)."""

    from ketamine_pmx.io import check_outputs

    out = Path(out)
    given = [Path(p) for p in inputs if p is not None]
    check_outputs([out / name for name in OUTPUT_ENTRIES], given)
    rule = "the output folder is replaced as a whole; give a new folder or an earlier output"
    if out.exists() and not out.is_dir():
        raise DosingError(f"--out {out}: is a file, not a folder ({rule})")
    resolved = out.resolve()
    inside = [p for p in given if p.resolve().is_relative_to(resolved)]
    if inside:
        raise DosingError(f"--out {out}: holds the input {inside[0]} ({rule})")
    if out.is_dir():
        foreign = sorted(e.name for e in out.iterdir() if e.name not in OUTPUT_ENTRIES)
        if foreign:
            raise DosingError(
                f"--out {out}: holds {len(foreign)} file(s) or folder(s) that are not "
                f"recommendation outputs (e.g. {foreign[0]}) ({rule})"
            )
    base = next(p for p in (resolved.parent, *resolved.parent.parents) if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=base).cleanup()
    except OSError as exc:
        raise DosingError(f"--out {out}: cannot write in {base} ({exc.strerror})") from None


def patient_summary(rec: pd.Series, regimens: pd.DataFrame, dosing: dict[str, Any]) -> str:
    """A short markdown summary of one patient's recommendation (with the gate status and the
    patient's warnings when ``rec`` has ``GATE`` and ``WARNINGS``); ``dosing`` is the config's
    section of that name."""
    s = dosing["safety"]
    prob = dosing.get("decision", {}).get("prob", 0.9)
    lines = [
        f"# Patient {rec['ID']} ({rec['INDICATION']}, {rec['SETTING']})",
        "",
        f"*{DISCLAIMER}*",
        "",
    ]
    gate = rec.get("GATE")
    if isinstance(gate, str) and gate != "passed":
        lines += [
            "**Diagnostic gate not passed:** the config let the run go on (`gate.allow_failure`"
            " or `gate.allow_failure_for`); these numbers rest on a posterior that failed its "
            "checks:",
            *[f"- {part}" for part in gate.split(" | ")],
            "",
        ]
    if isinstance(rec.get("WARNINGS"), str):
        lines += ["**Warnings:**", *[f"- {w}" for w in rec["WARNINGS"].split(" | ")], ""]
    how = {
        "population": "population model and the patient's covariates (no concentrations)",
        "importance": f"patient's measured concentrations (importance resampling, ESS {rec['ESS']:.0f})",
        "nuts": f"patient's measured concentrations (per-patient NUTS; importance ESS {rec['ESS']:.0f})",
    }[rec["METHOD"]]
    lines.append(f"Individual PK from the {how}.")
    lines.append("")

    def interval(col: str, fmt: str) -> str:
        lo, hi = rec.get(f"{col}_LO"), rec.get(f"{col}_HI")
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
            return ""
        return f" ({100 * prob:.0f}% interval {lo:{fmt}}-{hi:{fmt}})"

    if is_true(rec["RECOMMENDED"]):
        lines += [
            f"**Recommended:** {rec['REGIMEN']} ({rec['TOTAL_MG']:.0f} mg in all).",
            "",
            f"- P(response) {rec['P_RESPONSE']:.2f}{interval('P_RESPONSE', '.2f')}",
            f"- peak ketamine median {rec['PEAK_KET_MEDIAN']:.0f} ng/mL"
            f"{interval('PEAK_KET', '.0f')}; P(> {s['peak_ketamine_ng_ml']:g} ng/mL) "
            f"{rec['P_PEAK_EXCEEDED']:.2f} (tolerated {s['peak_tolerated_probability']:g})",
            f"- cumulative ketamine AUC median {rec['CUM_AUC_KET_MEDIAN']:.0f} ng h/mL"
            f"{interval('CUM_AUC_KET', '.0f')}; P(> {s['cumulative_auc_ng_h_ml']:g} ng h/mL) "
            f"{rec['P_CUM_EXCEEDED']:.2f} (tolerated {s['cumulative_tolerated_probability']:g})",
            f"- why: {rec['REASON']}",
        ]
    else:
        lines.append(f"**No regimen recommended:** {rec['REASON']}.")
    if is_true(rec.get("LIKELY_NON_RESPONDER")):
        lines += ["", f"**Likely non-responder.** Main factor: {rec['DRIVER']}."]
    ok = (
        regimens[regimens["ACCEPTABLE"].map(is_true)]
        if "ACCEPTABLE" in regimens
        else regimens.iloc[0:0]
    )
    if len(ok):
        top = ok.sort_values("P_RESPONSE", ascending=False).head(5)
        lines += [
            "",
            "| alternatives within the limits | P(response) | 90% interval | P(peak) | P(cum.) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.REGIMEN} | {r.P_RESPONSE:.2f} | {r.P_RESPONSE_LO:.2f}-{r.P_RESPONSE_HI:.2f} "
            f"| {r.P_PEAK_EXCEEDED:.2f} | {r.P_CUM_EXCEEDED:.2f} |"
            for r in top.itertuples()
        ]

    def count(col: str) -> int:
        v = rec.get(col)
        return 0 if v is None or pd.isna(v) else int(v)

    lines += [
        "",
        f"{count('N_ACCEPTABLE')} of {count('N_CANDIDATES')} candidate regimens within the "
        "safety limits.",
    ]
    return "\n".join(lines) + "\n"


def _summary(rec: pd.DataFrame, texts: list[str], notes: list[str], caveats: Caveats) -> str:
    """``summary.md``: the cohort's counts, gate status, warnings and notes, then each patient."""
    flagged = int(rec["LIKELY_NON_RESPONDER"].map(is_true).sum())
    counts = rec["STATUS"].value_counts(sort=False)
    status = "; ".join(f"{n} {s}" for s, n in counts.items())
    head = [
        "# Dose recommendations",
        "",
        f"*{DISCLAIMER}*",
        "",
        f"{len(rec)} patient(s): {status}; {flagged} flagged as likely non-responders.",
        "",
    ]
    if caveats.gates:
        head += [
            "**Diagnostic gate not passed** by the model(s) below: the config let the run go on "
            "(`gate.allow_failure` or `gate.allow_failure_for`), so every number here rests on "
            "a posterior that failed its checks.",
            "",
            *[f"- {m}: {'; '.join(f)}" for m, f in caveats.gates.items()],
            "",
        ]
    if caveats.warnings:
        head += ["## Warnings", "", *[f"- {w}" for w in caveats.warnings], ""]
    if notes:
        head += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(head) + "\n" + "\n".join(texts)


def write_recommendation(
    result: Recommendation,
    out_dir: str | Path,
    dosing: dict[str, Any],
    caveats: Caveats | None = None,
    names: dict[str, str] | None = None,
    figures: bool | None = None,
    draw: Callable[[pd.DataFrame, pd.Series, dict[str, Any]], Figure] | None = None,
) -> pd.DataFrame:
    """Write a recommendation into the directory ``out_dir`` (replaced as a whole, atomically).

    ``recommendations.csv`` (one row per patient, with the patient's ``WARNINGS``, the models'
    ``GATE`` status and the patient's ``SUMMARY_FILE`` and ``FIGURE_FILE``), ``regimens.csv``
    (every candidate), ``summary.md`` (all patients), ``notes.json`` (notes, warnings and gate
    failures, for :func:`merge_batches`), and per patient ``patients/<name>.md`` and, when
    ``figures`` (default: at most :data:`FIGURES_AUTO_MAX` patients), ``patients/<name>.png``
    (P(response) and P(limits) against dose); ``names`` (default :func:`patient_file_names` of
    these patients) maps each ID to its file name; ``dosing`` is the config's section of that
    name. The figures are drawn by ``draw(regimens, recommendation_row, dosing["safety"])``
    (``plots.dose_recommendation``); without ``draw`` no figure is written, as computation
    never plots. Returns the recommendations as written.
    """
    from ketamine_pmx.io import atomic_dir, write_csv, write_figure, write_json, write_text

    caveats = caveats or Caveats()
    ids = result.recommendations["ID"].astype(str)
    names = names or patient_file_names(ids)
    if figures is None:
        figures = len(ids) <= FIGURES_AUTO_MAX
    figures = figures and draw is not None
    by_id = dict(tuple(result.regimens.groupby("ID", sort=False)))
    rec = result.recommendations.assign(
        WARNINGS=[" | ".join(caveats.patient_warnings.get(i, [])) or np.nan for i in ids],
        GATE=caveats.gate_text(),
        SUMMARY_FILE=[f"patients/{names[i]}.md" for i in ids],
        FIGURE_FILE=[f"patients/{names[i]}.png" if figures and i in by_id else np.nan for i in ids],
    )
    with atomic_dir(out_dir) as out:
        (out / "patients").mkdir()
        write_csv(out / "recommendations.csv", rec, float_format="%.4g")
        write_csv(out / "regimens.csv", result.regimens, float_format="%.4g")
        texts = []
        for _, row in rec.iterrows():
            regs = by_id.get(row["ID"], result.regimens.iloc[0:0])
            texts.append(patient_summary(row, regs, dosing))
            write_text(out / row["SUMMARY_FILE"], texts[-1])
            if isinstance(row["FIGURE_FILE"], str):
                fig = draw(regs, row, dosing["safety"])
                write_figure(out / row["FIGURE_FILE"], fig, dpi=100)
        notes = {"notes": result.notes, "warnings": caveats.warnings, "gates": caveats.gates}
        write_json(out / "notes.json", notes)
        write_text(out / "summary.md", _summary(rec, texts, result.notes, caveats))
    return rec


def patient_batch(patients: pd.DataFrame, batch: int, n_batches: int) -> pd.DataFrame:
    """Batch ``batch`` of ``n_batches`` contiguous batches of the patients (may be empty)."""
    if not 0 <= batch < n_batches:
        raise DosingError(f"batch {batch} is not one of 0..{n_batches - 1}")
    rows = np.array_split(np.arange(len(patients)), n_batches)[batch]
    return patients.iloc[rows].reset_index(drop=True)


def read_table(path: str | Path) -> pd.DataFrame:
    """A recommendations/regimens CSV as written (IDs as text, "." as missing)."""
    return pd.read_csv(path, dtype={"ID": str}, na_values=["."], keep_default_na=False)


def merge_batches(batch_dirs: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Gather batch outputs of :func:`write_recommendation` into one directory, as one
    :func:`write_recommendation` of all the patients would have written them: one
    ``summary.md`` whose counts, gate status, warnings and notes are the cohort's (each
    warning and note once), then every patient's summary in batch order."""

    from ketamine_pmx.io import atomic_dir, write_csv, write_json, write_text

    out = Path(out_dir)
    recs, regs, texts = [], [], []
    notes: dict[str, Any] = {"notes": [], "warnings": [], "gates": {}}
    for d in map(Path, batch_dirs):
        recs.append(read_table(d / "recommendations.csv"))
        regs.append(read_table(d / "regimens.csv"))
        texts += [(d / f).read_text(encoding="utf-8") for f in recs[-1]["SUMMARY_FILE"]]
        part = json.loads((d / "notes.json").read_text(encoding="utf-8"))
        notes["notes"] += part["notes"]
        notes["warnings"] += part["warnings"]
        notes["gates"].update(part["gates"])
    notes["notes"] = list(dict.fromkeys(notes["notes"]))
    notes["warnings"] = list(dict.fromkeys(notes["warnings"]))
    rec = pd.concat(recs, ignore_index=True)
    files = rec["SUMMARY_FILE"].str.casefold()
    if files.duplicated().any():
        raise DosingError(
            f"patients {sorted(rec.loc[files.duplicated(keep=False), 'ID'])} share a file name "
            "across batches (the batches must name files from the whole patients file)"
        )
    caveats = Caveats(notes["warnings"], {}, notes["gates"])
    write_csv(out / "recommendations.csv", rec, float_format="%.4g")
    write_csv(out / "regimens.csv", pd.concat(regs, ignore_index=True), float_format="%.4g")
    write_json(out / "notes.json", notes)
    write_text(out / "summary.md", _summary(rec, texts, notes["notes"], caveats))
    with atomic_dir(out / "patients") as tmp:
        for d in map(Path, batch_dirs):
            for f in sorted((d / "patients").glob("*")):
                shutil.copy2(f, tmp / f.name)
    return rec


def is_true(value: Any) -> bool:
    """A flag cell read from a table: True (Python or numpy bool, or "True"); NaN is False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return str(value).strip().lower() == "true"
