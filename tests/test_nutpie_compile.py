"""ketamine_pmx.nutpie_compile: nutpie's compiled model with entry points cached on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pymc as pm
import pytest

nutpie = pytest.importorskip("nutpie")

from ketamine_pmx import nutpie_compile  # noqa: E402

pytestmark = pytest.mark.skipif(
    not nutpie_compile.supported(), reason="nutpie version without the known internals"
)

#: A small hierarchical model with a data container (shared data through nutpie's record).
MODEL_SRC = textwrap.dedent(
    """
    import numpy as np
    import pymc as pm

    def make_model(y):
        with pm.Model(coords={"group": range(4)}) as model:
            data = pm.Data("y", y)
            mu = pm.Normal("mu", 0.0, 5.0)
            tau = pm.HalfNormal("tau", SALT)
            theta = pm.Normal("theta", mu, tau, dims="group")
            pm.Normal("obs", theta[np.arange(12) % 4], 1.0, observed=data)
        return model
    """
)


def make_model(y: np.ndarray, salt: float = 2.0) -> pm.Model:
    scope: dict = {}
    exec(MODEL_SRC.replace("SALT", repr(salt)), scope)
    return scope["make_model"](y)


Y = np.linspace(-1.0, 2.0, 12)


def draws(compiled, seed=5):
    idata = nutpie.sample(compiled, draws=30, tune=30, chains=2, cores=1, seed=seed, progress_bar=False)  # fmt: skip
    return {k: idata.posterior[k].values for k in ("mu", "tau", "theta")}


def test_same_draws_as_nutpies_own_compilation():
    ours = nutpie_compile.compile_pymc_model(make_model(Y))
    theirs = nutpie.compile_pymc_model(make_model(Y))
    a, b = draws(ours), draws(theirs)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # new data through nutpie's shared-data record, without recompiling
    y2 = Y[::-1] * 3.0
    a2, b2 = draws(ours.with_data(y=y2)), draws(theirs.with_data(y=y2))
    for k in a2:
        np.testing.assert_array_equal(a2[k], b2[k])
        assert not np.array_equal(a2[k], a[k])


def test_a_second_process_loads_the_entry_points_from_the_cache(tmp_path):
    """nutpie's own wrappers are recompiled in every process; ours are loaded."""
    script = tmp_path / "compile.py"
    script.write_text(
        MODEL_SRC.replace("SALT", "2.0")
        + textwrap.dedent(
            """
            from ketamine_pmx.nutpie_compile import compile_pymc_model
            m = compile_pymc_model(make_model(np.linspace(-1.0, 2.0, 12)))
            print("HITS", m.compiled_logp_func._cache_hits, m.compiled_expand_func._cache_hits)
            """
        )
    )
    # an empty PyTensor cache of its own: nothing compiled by an earlier run is there
    env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={tmp_path / 'cache'}"}

    def hits() -> str:
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=True, env=env
        )
        return next(line for line in out.stdout.splitlines() if line.startswith("HITS"))

    assert hits() == "HITS 0 0"  # compiled and written
    assert hits() == "HITS 1 1"  # both loaded


def test_models_without_a_cache_key_fall_back_to_nutpie(monkeypatch):
    monkeypatch.setattr(nutpie_compile, "_pytensor_key", lambda fn: None)
    compiled = nutpie_compile.compile_pymc_model(make_model(Y))
    assert compiled.compiled_logp_func._cache_hits == 0
    assert draws(compiled)["mu"].shape == (2, 30)
