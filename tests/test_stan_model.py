"""The Stan version of the default PK model (benchmarks/stan) against the PyMC model.

The key check: at random points, Stan's log density on the unconstrained scale (Jacobian
included) and its gradient equal PyMC's ``compile_logp(jacobian=True)`` / ``compile_dlogp`` on
a small simulated trial; the Stan convolution E(t; nodes) equals mpmath (values and gradients)
at coincident and nearly coincident rates. The program's data come from the benchmark's
command line (``run_stan.py --write-data``). Needs pystan; the first run compiles two Stan
programs (minutes; httpstan caches them under the program text).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import mpmath as mp
import numpy as np
import pytest
from conftest import REPO, make_config

from ketamine_pmx.data import validate_frame
from ketamine_pmx.models import (
    build_pk_model,
    censored_observations,
    empirical_bayes_start,
    load_pk_spec,
    prepare_pk_data,
    with_bsv,
    with_parameter,
)
from ketamine_pmx.simulate import simulate_trial

stan = pytest.importorskip("stan")
pytestmark = pytest.mark.slow

STAN_DIR = REPO / "benchmarks" / "stan"
#: The Stan program of the default PK model.
PROGRAM = STAN_DIR / "pk_2cmt_metab.stan"


def build(program: str, data: dict[str, Any], attempts: int = 3) -> Any:
    """``stan.build``, retried when httpstan's stanc call runs past its hard 1-second timeout
    (on a busy machine; pystan then fails with a JSON "TAPE_ERROR")."""
    for attempt in range(attempts):
        try:
            return stan.build(program, data=data)
        except ValueError as exc:
            if "TAPE_ERROR" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(5.0 * (attempt + 1))
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(PyMC model, pystan model) of pk_2cmt_metab on the smoke trial (9 subjects).

    The Stan program is non-centred; the PyMC model is built in the same parameterisation
    (the default spec weights and whitens the effects: the same model, other free variables).
    """
    cfg = make_config()
    raw = simulate_trial(cfg).data.astype(str).replace({"nan": ".", "<NA>": "."})
    table = validate_frame(raw, cfg["data"], "sim").table
    spec = load_pk_spec(REPO / "models" / "pk_2cmt_metab.yaml")
    # the Stan program samples log cl_hnk_pop itself, not per fm_hnk (the same posterior)
    spec = with_bsv(spec, parameterisation="noncentred", whitening="none")
    spec = with_parameter(spec, "cl_hnk", sample_per=None)
    data = prepare_pk_data(table, spec)
    assert (data.obs["BLQ"] == 1).any()  # the censored term is exercised

    # the program's data as the benchmark writes them, for the same trial
    path = tmp_path_factory.mktemp("stan") / "data.json"
    command = [sys.executable, str(STAN_DIR / "run_stan.py"), "--config", "config/smoke.yaml"]
    proc = subprocess.run(
        [*command, "--write-data", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    sdata = json.loads(path.read_text())
    assert sdata["N"] == len(data.subjects)
    np.testing.assert_array_equal(sdata["y"], censored_observations(spec, data)[0])
    assert sdata["n_dir"] > 0 and sdata["n_post"] > 0
    stan_model = build(PROGRAM.read_text(encoding="utf-8"), sdata)
    return build_pk_model(spec, data, empirical_bayes_start(spec, data)), stan_model


def stan_values(point: dict[str, np.ndarray]) -> dict[str, Any]:
    """Stan's (constrained) parameter values from a PyMC point of value variables: PyMC's
    ``<name>_log__`` of the half-normal parameters becomes ``<name>``."""
    out = {}
    for name, value in point.items():
        if name.endswith("_log__"):
            out[name.removesuffix("_log__")] = np.exp(value).tolist()
        else:
            out[name] = np.asarray(value).tolist()
    return out


def stan_functions() -> str:
    """The program's ``functions { ... }`` block (to test the functions alone)."""
    text = PROGRAM.read_text(encoding="utf-8")
    start = text.index("functions {")
    return text[start : text.index("\ndata {", start)].rstrip() + "\n"


def random_point(initial: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """A point of PyMC value variables around the prior centres."""
    point = {}
    for name, value in initial.items():
        value = np.asarray(value, float)
        if name.startswith("z_"):
            new = rng.standard_normal(value.shape)
        elif name.endswith("_log__"):  # omega and sigma_prop (log scale)
            new = np.log(0.3) + 0.4 * rng.standard_normal(value.shape)
        elif name == "e_cyp2b6":
            new = 0.3 * rng.standard_normal(value.shape)
        else:  # log_*_pop, logit_fm_hnk_pop: around the prior medians
            new = value + 0.4 * rng.standard_normal(value.shape)
        point[name] = new
    return point


def stan_unconstrained(point: dict, stan_model) -> np.ndarray:
    """Stan's unconstrained vector from PyMC value variables (declaration order, column-major)."""
    parts = []
    for name in stan_model.param_names:
        value = point[name] if name in point else point[f"{name}_log__"]
        parts.append(np.asarray(value, float).ravel(order="F"))
    return np.concatenate(parts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stan_log_density_and_gradient_equal_pymc(models, seed):
    pymc_model, stan_model = models
    initial = pymc_model.initial_point()
    point = random_point(initial, np.random.default_rng(seed))

    # The mapping of PyMC's value variables onto Stan's parameter vector (and the Jacobian
    # convention: HalfNormal <-> <lower=0>, both log-transformed) is Stan's own.
    u = stan_unconstrained(point, stan_model)
    u_stan = np.array(stan_model.unconstrain_pars(stan_values(point)))
    np.testing.assert_allclose(u_stan, u, rtol=1e-12, atol=1e-12)

    logp_pymc = float(pymc_model.compile_logp(jacobian=True)(point))
    logp_stan = stan_model.log_prob(u.tolist(), adjust_transform=True)
    assert np.isfinite(logp_pymc)
    assert logp_stan == pytest.approx(logp_pymc, rel=1e-6)
    assert abs(logp_stan - logp_pymc) < 1e-8 * abs(logp_pymc)  # in practice ~1e-11

    # Gradients: PyMC's flat gradient is in value_vars order (C order per variable).
    flat = pymc_model.compile_dlogp(jacobian=True)(point)
    grad, offset = {}, 0
    for var in pymc_model.value_vars:
        shape = np.shape(point[var.name])
        size = int(np.prod(shape))
        grad[var.name] = flat[offset : offset + size].reshape(shape)
        offset += size
    g_pymc = stan_unconstrained(grad, stan_model)
    g_stan = np.array(stan_model.grad_log_prob(u.tolist()))
    # Stan's normal_lcdf (the BLQ rows) has an exact value but approximate derivatives
    # (polynomial fits): elements differ by up to ~1e-5 relative, ~2e-6 of the largest. With
    # the censored term written with erfc instead, the gradients agree to ~1e-10 of the largest.
    scale = np.abs(g_pymc).max()
    np.testing.assert_allclose(g_stan, g_pymc, rtol=1e-4, atol=2e-5 * scale)


# --------------------------------------------------------------------------------------
# The convolution E(t; nodes) of the Stan program against mpmath
# --------------------------------------------------------------------------------------

E_PROGRAM_BODY = """
data {
  int<lower=1> n;
  int<lower=1> k;
  vector[n] t;
}
transformed data {
  vector[32] inv_fact;
  inv_fact[1] = 1;
  for (r in 2:32) {
    inv_fact[r] = inv_fact[r - 1] / (r - 1);
  }
}
parameters {
  matrix[n, k] x;
}
model {
  for (i in 1:n) {
    target += log(exp_conv(t[i], x[i]', inv_fact));
  }
}
generated quantities {
  vector[n] e;
  for (i in 1:n) {
    e[i] = exp_conv(t[i], x[i]', inv_fact);
  }
}
"""


def mp_exp_conv(t: float, nodes: list[float]):
    """E(t; nodes) at 50 digits: entry (n, 0) of expm(t M), M the chain's bidiagonal matrix."""
    with mp.workdps(50):
        n = len(nodes)
        mat = mp.zeros(n, n)
        for i, x in enumerate(nodes):
            mat[i, i] = -mp.mpf(x) * t
            if i:
                mat[i, i - 1] = mp.mpf(t)
        return mp.expm(mat)[n - 1, 0]


def e_cases(k: int) -> list[tuple[float, list[float]]]:
    """(t, nodes): coincident, nearly coincident and separated rates (1/h), node 0 included."""
    beta, k_nk, k_hnk, alpha = 0.22, 0.28, 0.66, 2.3
    cases = []
    for gap in (0.0, 1e-9, 1e-6, 1e-3, 0.3):
        for t in (0.25, 6.0, 48.0):
            near = [beta, beta * (1 + gap), beta * (1 + 2 * gap), beta * (1 + 3 * gap)]
            if k == 2:
                cases += [(t, near[:2]), (t, [0.0, 1e-3 * gap])]
            elif k == 3:
                cases += [(t, near[:3]), (t, [beta, k_nk * (1 + gap), k_nk]), (t, [0.0, *near[:2]])]
            else:
                cases += [(t, near), (t, [beta, k_nk, k_nk * (1 + gap), 0.0])]
    if k == 2:  # either side of the series/recursion switch (scaled spread 1/2)
        cases += [(4.0, [beta, beta + s / 4.0]) for s in (0.49, 0.499999, 0.5, 0.51, 0.99)]
    if k == 4:
        cases += [(t, [alpha, k_hnk, k_nk, 0.0]) for t in (0.1, 1.0, 24.0, 200.0)]
    return cases


@pytest.mark.parametrize("k", [2, 3, 4])
def test_stan_exp_conv_matches_mpmath(k):
    cases = e_cases(k)
    t = np.array([c[0] for c in cases])
    x = np.array([c[1] for c in cases])
    program = stan_functions() + E_PROGRAM_BODY
    model = build(program, {"n": len(cases), "k": k, "t": t.tolist()})
    u = x.ravel(order="F").tolist()
    values = np.array(model.constrain_pars(u))[x.size :]
    grad = np.array(model.grad_log_prob(u)).reshape(x.shape, order="F")
    for i, (ti, nodes) in enumerate(cases):
        ref = mp_exp_conv(ti, nodes)
        assert float(abs(values[i] - ref) / ref) < 2e-14, (ti, nodes)
        # d log E / dx_j = -E(t; nodes, x_j) / E(t; nodes)
        ref_grad = [float(-mp_exp_conv(ti, [*nodes, xj]) / ref) for xj in nodes]
        np.testing.assert_allclose(grad[i], ref_grad, rtol=1e-12, atol=1e-14, err_msg=str(nodes))
