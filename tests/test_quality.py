"""Code quality gates that run with the tests: ruff (lint + format) and snakefmt."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO

PYTHON_PATHS = ["src", "tests", "workflow/scripts", "benchmarks", "notebooks"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    if found is None:
        found = (
            str(REPO / ".venv" / "bin" / name) if (REPO / ".venv" / "bin" / name).exists() else None
        )
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_ruff_lint_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "check", *PYTHON_PATHS], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", *PYTHON_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [_tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_library_never_imports_snakemake():
    code = "import sys, ketamine_pmx.cli, ketamine_pmx.data, ketamine_pmx.simulate, ketamine_pmx.results; print('snakemake' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------
# The library's floors (pyproject.toml [tool.importlinter]) and its import graph
# --------------------------------------------------------------------------------------

CYCLES_SCRIPT = """
import json, sys
import grimp
graph = grimp.build_graph("ketamine_pmx", cache_dir=None)
modules = sorted(graph.modules)
index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(m):
    index[m] = low[m] = counter[0]; counter[0] += 1; stack.append(m); on.add(m)
    for n in sorted(graph.find_modules_directly_imported_by(m)):
        if n not in index:
            visit(n); low[m] = min(low[m], low[n])
        elif n in on:
            low[m] = min(low[m], index[n])
    if low[m] == index[m]:
        comp = []
        while True:
            n = stack.pop(); on.discard(n); comp.append(n)
            if n == m:
                break
        if len(comp) > 1:
            out.append(sorted(comp))
for m in modules:
    if m not in index:
        visit(m)
print(json.dumps(out))
"""


def _source_copy(tmp_path, plant: dict[str, str] | None = None):
    """A copy of the package's source, with ``plant`` lines appended to some modules."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src" / "ketamine_pmx", src / "ketamine_pmx")
    for module, line in (plant or {}).items():
        path = src / "ketamine_pmx" / module
        path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    return src


def _env(src) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(src)}


def _lint_imports(src) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=src.parent,
        env=_env(src),
        capture_output=True,
        text=True,
    )


def _cycles(src) -> list[list[str]]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", CYCLES_SCRIPT],
        env=_env(src),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_library_keeps_its_floors(tmp_path):
    proc = _lint_imports(_source_copy(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # a computation module that draws
        ("models/pk_data.py", "import ketamine_pmx.plots", "ketamine_pmx.plots"),
        # an arrow that runs back up: the PK structure reaching into dosing
        ("data/validation.py", "import ketamine_pmx.dosing.report", "ketamine_pmx.dosing"),
        # siblings importing each other
        ("checks/ppc.py", "import ketamine_pmx.dosing.fits", "ketamine_pmx.dosing"),
        ("models/spec.py", "import snakemake", "snakemake"),
    ],
)
def test_floor_check_catches_a_planted_violation(tmp_path, module, line, broken):
    proc = _lint_imports(_source_copy(tmp_path, {module: line}))
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and broken in proc.stdout


def test_library_has_no_import_circle(tmp_path):
    assert _cycles(_source_copy(tmp_path)) == []


def test_circle_check_catches_a_planted_circle(tmp_path):
    # A circle inside one floor: the layers contract cannot see it, the graph check does.
    src = _source_copy(tmp_path, {"models/spec.py": "import ketamine_pmx.models.pk_model"})
    cycles = _cycles(src)
    assert any(
        "ketamine_pmx.models.spec" in c and "ketamine_pmx.models.pk_model" in c for c in cycles
    )


def _private_imports(paths) -> list[str]:
    """``from ketamine_pmx... import _name`` and ``module._name`` on a ketamine_pmx module."""
    import ast

    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("ketamine_pmx")
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and alias.name != "__version__":
                        found.append(f"{path}:{node.lineno} imports {alias.name}")
                    modules.add(alias.asname or alias.name)
            if isinstance(node, ast.Import):
                modules |= {a.asname for a in node.names if a.name.startswith("ketamine_pmx")}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    files = [p for d in PYTHON_PATHS for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts]
    assert _private_imports(files) == []


def test_private_name_check_catches_a_planted_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from ketamine_pmx.models.pk_model import _likelihood\n"
        "from ketamine_pmx import dosing\n"
        "dosing._secret()\n",
        encoding="utf-8",
    )
    assert len(_private_imports([planted])) == 2
