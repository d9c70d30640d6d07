"""The inspection notebooks: stored without outputs, read results only through the results API,
and run from top to bottom on the smoke run's results (so they cannot rot)."""

from __future__ import annotations

import os

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

from ketamine_pmx.results import RESULTS_ENV

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Figures each notebook draws (at least); a notebook added later draws at least one.
FIGURES = {"pk_posterior": 5, "biomarker_effects": 3, "dose_recommendation": 1}


def _read(path):
    return nbformat.read(path, as_version=4)


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters' (papermill)"
    return tagged[0]


def test_the_notebooks_are_there():
    expected = {"pk_posterior.ipynb", "biomarker_effects.ipynb", "dose_recommendation.ipynb"}
    assert {p.name for p in NOTEBOOKS} >= expected


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_and_reads_results_through_the_api(path):
    nb = _read(path)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "stored with outputs"
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "results.load(run_dir)" in source
    for pattern in ("read_csv(", "from_netcdf(", "open_dataset(", "/work/", "/home/", "/tmp/"):
        assert pattern not in source, f"{path.name}: {pattern} (read through ketamine_pmx.results)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_run_dir_defaults_to_results_or_the_environment(path, monkeypatch):
    cell = _parameters_cell(_read(path))
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    scope: dict = {}
    exec(cell.source, scope)
    assert scope["run_dir"] == "../results"
    monkeypatch.setenv(RESULTS_ENV, "elsewhere/results")
    exec(cell.source, scope)
    assert scope["run_dir"] == "elsewhere/results"


@pytest.mark.workflow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_smoke_run(path, smoke_run, tmp_path, monkeypatch):
    """Executed as papermill would: run_dir injected after the parameters cell."""
    nb = _read(path)
    index = nb.cells.index(_parameters_cell(nb))
    injected = nbformat.v4.new_code_cell(f"run_dir = {str(smoke_run)!r}")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute(env=dict(os.environ))
    finally:
        nbformat.write(nb, tmp_path / path.name)  # executed copy, for a look after a failure
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= FIGURES.get(path.stem, 1), f"{path.name}: {len(images)} figures"
