"""ketamine_pmx.nutpie_compile: nutpie's compiled model with entry points cached on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pymc as pm
import pytest

nutpie = pytest.importorskip("nutpie")

from ketamine_pmx.inference import nutpie_compile  # noqa: E402

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
            from ketamine_pmx.inference import compile_pymc_model
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


#: A small population PK model: a one-compartment oral model per subject, lognormal subject
#: effects, a proportional error and a censored (M3) term through the project's log Phi. Big
#: enough that the compiled log density calls functions that are not inlined into it.
PK_SRC = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import pymc as pm
    import pytensor.tensor as pt
    from ketamine_pmx.models import log_ndtr
    from ketamine_pmx.inference import Nuts

    n_sub, n_obs = 12, 96
    idx = np.repeat(np.arange(n_sub), n_obs // n_sub)
    t = np.tile(np.linspace(0.25, 8.0, n_obs // n_sub), n_sub)
    y = np.random.default_rng(1).normal(1.0, 0.3, n_obs)
    with pm.Model() as model:
        t_d, y_d, idx_d = pm.Data("t", t), pm.Data("y_obs", y), pm.Data("idx", idx)
        mu = pm.Normal("mu", [1.0, -1.0, 0.5], 1.0, shape=3)
        omega = pm.HalfNormal("omega", 0.5, shape=3)
        z = pm.Normal("z", 0.0, 1.0, shape=(n_sub, 3))
        theta = pt.exp(mu + omega * z)
        ka, ke, v = theta[idx_d, 0], theta[idx_d, 1], theta[idx_d, 2]
        conc = ka / (v * (ka - ke)) * (pt.exp(-ke * t_d) - pt.exp(-ka * t_d))
        sigma = pm.HalfNormal("sigma", 0.5)
        mu_y = pt.log(pt.abs(conc) + 1e-3)
        pm.Normal("y", mu_y, sigma, observed=y_d)
        pm.Potential("censored", log_ndtr((0.2 - mu_y[::3]) / sigma).sum())
    settings = {"backend": "nutpie", "chains": 2, "draws": 50, "tune": 50, "cores": 1,
                "target_accept": 0.8, "low_rank_mass_matrix": False}
    nuts = Nuts(model, settings)
    post = nuts.sample(seed=3).idata.posterior
    digest = hashlib.sha256(b"".join(post[k].values.tobytes() for k in sorted(post.data_vars)))
    print(json.dumps({"draws": digest.hexdigest(), "loaded": nuts.compiled.compiled_logp_func._cache_hits}))
    """
)


def test_the_draws_do_not_depend_on_the_compile_cache(tmp_path):
    """Compiled here or loaded from the cache, in one cache directory or another: the same
    seed gives bit-identical draws (the entry point once ran other copies of its callees
    when loaded than when freshly compiled, and the last bits of the gradient differed)."""
    script = tmp_path / "fit.py"
    script.write_text(PK_SRC)

    def fit(*caches: str) -> list[dict]:
        """One process per cache directory, run side by side."""
        procs = [
            subprocess.Popen(
                [sys.executable, str(script)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={
                    **os.environ,
                    "PYTENSOR_FLAGS": f"base_compiledir={tmp_path / cache}",
                },
            )
            for cache in caches
        ]
        outs = [proc.communicate() for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), [err for _, err in outs]
        return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    # Two empty cache directories side by side, then the first one warm: its PyTensor functions
    # are loaded from the cache, and with them the entry point where PyTensor gives the log
    # density the same cache key again (it does not always, for this graph: then a new entry
    # point is compiled over the loaded functions, which once changed the draws as well).
    runs = [*fit("a", "b"), *fit("a")]
    assert len({run["draws"] for run in runs}) == 1, runs
    assert runs[0]["loaded"] == runs[1]["loaded"] == 0
