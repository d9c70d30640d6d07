"""ketamine_pmx.pk: exact linear-chain solutions against ODE integration, mpmath and autodiff.

References, each independent of the module under test: scipy's ``solve_ivp`` on the ODE system
(integrated piecewise between dose events), the project's simulator (``simulate.integrate_pk``)
and mpmath at 50 digits (the convolution E as the matrix exponential of the chain's bidiagonal
rate matrix, cross-checked against the explicit divided-difference formula; its derivatives
from the identity dE/dx_k = -E(nodes + x_k), cross-checked against mpmath.diff).
"""

from __future__ import annotations

import dataclasses
import itertools

import mpmath as mp
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytensor.graph.basic import Constant
from pytensor.graph.traversal import graph_inputs
from scipy.integrate import solve_ivp

from ketamine_pmx.contract import MOLAR_MASS_G_MOL
from ketamine_pmx.pk import (
    Metabolite,
    build_layout,
    np_conc_ng_ml,
    np_disposition,
    np_exp_conv,
    np_exp_conv_naive,
    pt_conc_ng_ml,
    pt_disposition,
    pt_exp_conv,
    pt_exp_conv_naive,
)

#: Most graphs here are compiled without C code for the outer graph (the E and disposition
#: kernels are compiled C either way): this saves minutes of one-off C compilation on a fresh
#: machine. ``chain_fn`` and ``test_numpy_and_pytensor_agree`` use the default mode.
QUICK = "FAST_COMPILE"
R_NK = MOLAR_MASS_G_MOL["NK"] / MOLAR_MASS_G_MOL["KET"]
R_HNK = MOLAR_MASS_G_MOL["HNK"] / MOLAR_MASS_G_MOL["NK"]
GAPS = (0.0, 1e-9, 1e-6, 1e-3)

# --------------------------------------------------------------------------------------
# Reference implementations (independent of ketamine_pmx.pk)
# --------------------------------------------------------------------------------------


def mp_exp_conv(t, nodes):
    """E(t; nodes) in mpmath: entry (n, 0) of expm(t M), M the chain's bidiagonal matrix."""
    with mp.workdps(max(mp.mp.dps, 50)):  # mp.diff may ask for more digits
        t = mp.mpf(t)
        if t <= 0:
            return mp.mpf(0)
        n = len(nodes)
        mat = mp.zeros(n, n)
        for i, x in enumerate(nodes):
            mat[i, i] = -mp.mpf(x) * t
            if i:
                mat[i, i - 1] = t
        return mp.expm(mat)[n - 1, 0]


def mp_exp_conv_grad(t, nodes):
    """dE/dt and dE/dx_k: dE/dx_k = -E(nodes, x_k); dE/dt = E(x_1..x_n) - x_0 E(x_0..x_n)."""
    d_x = [-mp_exp_conv(t, [*nodes, x]) for x in nodes]
    rest = mp_exp_conv(t, nodes[1:]) if len(nodes) > 1 else mp.mpf(0)
    d_t = rest - mp.mpf(nodes[0]) * mp_exp_conv(t, nodes)
    return d_t, d_x


def relative_error(value, ref) -> float:
    return float(abs(mp.mpf(float(value)) - ref) / abs(ref))


def case_nodes(kind: str, gap: float) -> tuple[float, list[float]]:
    """(t, nodes) for a near-coincidence of the given relative gap."""
    beta = 0.22  # ketamine's terminal rate (1/h)
    k10 = 85.0 / 110.0
    return {
        # norketamine's elimination rate next to the parent's terminal rate
        "pair k_nk ~ beta": (10.0, [beta, beta * (1 + gap)]),
        # ... with the parent's distribution rate and an infusion's node 0 as well
        "triple k_nk ~ beta, alpha": (6.0, [2.4, beta * (1 + gap), beta]),
        # oral absorption: ka next to the elimination rate, and a metabolite
        "triple ka ~ k": (4.0, [k10 * (1 + gap), k10, 0.28]),
        # infusion's node 0 next to a slow rate (and a fast one)
        "0 vs small rate": (8.0, [0.0, 0.05 * gap, 0.9]),
        # everything clustered: k_hnk ~ k_nk ~ beta, plus node 0 and ka
        "five nodes": (12.0, [beta, beta * (1 + gap), beta * (1 - gap), 0.0, 1.1]),
    }[kind]


CASES = (
    "pair k_nk ~ beta",
    "triple k_nk ~ beta, alpha",
    "triple ka ~ k",
    "0 vs small rate",
    "five nodes",
)


class CompiledExpConv:
    """Compiled PyTensor E(t; nodes) with its gradient, compiled on first use.

    With ``t`` symbolic the gradient includes dE/dt (a separate kernel variant); with ``t``
    given as data (a constant, as in the concentrations) only the nodes' gradients exist.
    """

    def __init__(self):
        self.fns = {}

    def __call__(self, t, nodes, with_dt=False):
        t = np.atleast_1d(np.asarray(t, float))
        key = (len(nodes), None if with_dt else tuple(t))
        if key not in self.fns:
            t_var = pt.dvector("t") if with_dt else pt.as_tensor(t)
            xs = [pt.dvector(f"x{k}") for k in range(len(nodes))]
            e = pt_exp_conv(t_var, xs)
            wrt = [t_var, *xs] if with_dt else xs
            inputs = [t_var, *xs] if with_dt else xs
            outputs = [e, *pytensor.grad(e.sum(), wrt)]
            self.fns[key] = pytensor.function(inputs, outputs, mode=QUICK)
        args = [np.broadcast_to(np.asarray(x, float), t.shape) for x in nodes]
        return self.fns[key](*([t] if with_dt else []), *args)


@pytest.fixture(scope="module")
def exp_conv_fns():
    return CompiledExpConv()


def ode_conc(params: dict, doses: list[tuple], times: np.ndarray, n_met: int) -> np.ndarray:
    """Concentrations (ng/mL) at ``times`` x levels from solve_ivp (LSODA, rtol 1e-10, atol
    1e-16 mg) on the full ODE system, integrated piecewise between dose events.

    ``doses``: (time, amt, rate, route); states: depot, central, 2 peripherals, metabolites.
    """
    n = 4 + n_met
    a = np.zeros((n, n))
    cl, vc = params["cl"], params["vc"]
    q, vp = params.get("q", 0.0), params.get("vp", 1.0)
    q2, vp2 = params.get("q2", 0.0), params.get("vp2", 1.0)
    ka, f_bio = params.get("ka", 1.0), params.get("f_bio", 1.0)
    a[0, 0] = -ka
    a[1, 0] = f_bio * ka
    a[1, 1] = -(cl + q + q2) / vc
    a[1, 2], a[2, 1], a[2, 2] = q / vp, q / vc, -q / vp
    a[1, 3], a[3, 1], a[3, 3] = q2 / vp2, q2 / vc, -q2 / vp2
    prev, prev_v, prev_cl = 1, vc, cl
    for j, met in enumerate(params["metabolites"][:n_met]):
        s = 4 + j
        cl_f = met["cl_f"] if "cl_f" in met else met["fm"] * prev_cl
        a[s, prev] = cl_f / prev_v * met["r"]
        a[s, s] = -met["cl_m"] / met["v_m"]
        prev, prev_v, prev_cl = s, met["v_m"], met["cl_m"]
    volumes = [vc] + [m["v_m"] for m in params["metabolites"][:n_met]]
    rows = [1] + [4 + j for j in range(n_met)]

    breaks = sorted({0.0, *(d[0] for d in doses), *(d[0] + d[1] / d[2] for d in doses if d[2])})
    breaks.append(max(breaks[-1], times.max()) + 1.0)
    state = np.zeros(n)
    out = np.full((len(times), n), np.nan)
    for lo, hi in itertools.pairwise(breaks):
        inflow = np.zeros(n)
        for t0, amt, rate, route in doses:
            if rate == 0 and t0 == lo:
                state[0 if route == "depot" else 1] += amt
            elif rate > 0 and t0 <= lo < t0 + amt / rate:
                inflow[1] += rate
        inside = (times > lo) & (times <= hi)
        sol = solve_ivp(
            lambda _t, y, inflow=inflow: a @ y + inflow,
            (lo, hi),
            state,
            method="LSODA",
            t_eval=np.union1d(times[inside], [hi]),
            rtol=1e-10,
            atol=1e-16,
            jac=lambda _t, _y: a,
        )
        assert sol.success, sol.message
        out[inside] = sol.y[:, np.searchsorted(sol.t, times[inside])].T
        state = sol.y[:, -1].copy()
    return 1000.0 * out[:, rows] / np.array(volumes)


# --------------------------------------------------------------------------------------
# Regimens, parameters and layouts
# --------------------------------------------------------------------------------------

REGIMENS = {
    # one 40-min infusion of 0.5 mg/kg (70 kg)
    "mdd_40min": (
        [(0.0, 35.0, 35.0 / (40 / 60), "central")],
        [0.1, 0.33, 0.67, 1.0, 1.5, 2.0, 4.0, 8.0, 24.0, 48.0, 72.0],
    ),
    # 10 daily 4-h infusions titrated 10 -> 15 -> 20 mg/h
    "crps_daily": (
        [(24.0 * d, 4.0 * r, r, "central") for d, r in enumerate([10, 15] + [20] * 8)],
        [2.0, 4.0, 6.0, 26.0, 99.9, 218.0, 220.0, 240.0, 312.0],
    ),
    # 5 days of back-to-back 24-h infusions titrated 10 -> 40 mg/h
    "crps_continuous": (
        [(24.0 * d, 24.0 * r, r, "central") for d, r in enumerate([10, 20, 30, 40, 40])],
        [6.0, 12.0, 30.0, 60.0, 96.0, 119.9, 120.5, 122.0, 126.0, 144.0, 168.0],
    ),
    # repeated boluses every 6 h
    "boluses": (
        [(6.0 * k, 20.0, 0.0, "central") for k in range(4)],
        [0.5, 3.0, 6.5, 12.25, 20.0, 30.0, 48.0],
    ),
    # oral doses every 12 h (first-order absorption)
    "oral": (
        [(0.0, 50.0, 0.0, "depot"), (12.0, 50.0, 0.0, "depot")],
        [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.5, 14.0, 24.0, 48.0],
    ),
}


def ketamine_params(n_cmt: int, scale: float = 1.0) -> dict:
    """Realistic S-ketamine-like values (scale perturbs them per subject)."""
    p = {"cl": 85.0 * scale, "vc": 110.0 / scale**0.5, "ka": 1.2 * scale, "f_bio": 0.2}
    if n_cmt >= 2:
        p.update(q=130.0 * scale**0.3, vp=190.0)
    if n_cmt == 3:
        p.update(q2=20.0, vp2=400.0 * scale)
    p["metabolites"] = [
        {"cl_m": 70.0 / scale, "v_m": 250.0, "r": R_NK, "cl_f": 0.8 * p["cl"]},
        {"cl_m": 35.0 * scale, "v_m": 115.0, "r": R_HNK, "fm": 0.75},
    ]
    return p


def as_kwargs(subject_params: list[dict], n_met: int) -> dict:
    """pk keyword arguments with per-subject arrays from a list of per-subject dicts."""
    keys = [k for k in subject_params[0] if k != "metabolites"]
    kw = {k: np.array([p[k] for p in subject_params]) for k in keys}
    mets = []
    for j in range(n_met):
        m = {
            k: np.array([p["metabolites"][j][k] for p in subject_params])
            for k in subject_params[0]["metabolites"][j]
        }
        mets.append(Metabolite(**m))
    kw["metabolites"] = tuple(mets)
    return kw


def regimen_layout(n_met: int):
    doses, obs = [], []
    for s, (ds, ts) in enumerate(REGIMENS.values()):
        doses += [(s, *d) for d in ds]
        obs += [(s, t, lev) for t in ts for lev in range(n_met + 1)]
    layout = build_layout(
        dose_subject=[d[0] for d in doses],
        dose_time_h=[d[1] for d in doses],
        dose_amt_mg=[d[2] for d in doses],
        dose_rate_mg_h=[d[3] for d in doses],
        dose_route=[d[4] for d in doses],
        obs_subject=[o[0] for o in obs],
        obs_time_h=[o[1] for o in obs],
        obs_level=[o[2] for o in obs],
    )
    return layout, obs


SCALES = (1.0, 0.8, 1.25, 0.9, 1.1)


# --------------------------------------------------------------------------------------
# 1. Agreement with numerical integration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_cmt", [1, 2, 3])
def test_matches_solve_ivp_on_realistic_regimens(n_cmt):
    """1-, 2-, 3-compartment parents with 0, 1 and 2 metabolites, five regimens at once."""
    subject_params = [ketamine_params(n_cmt, s) for s in SCALES]
    ref = {}  # (subject, time) -> concentrations of levels 0, 1, 2 (metabolites do not feed back)
    for s, (doses, times) in enumerate(REGIMENS.values()):
        c = ode_conc(subject_params[s], doses, np.array(times), 2)
        ref.update({(s, t): row for t, row in zip(times, c, strict=True)})
    for n_met in (0, 1, 2):
        layout, obs = regimen_layout(n_met)
        conc = np_conc_ng_ml(layout, **as_kwargs(subject_params, n_met))
        expected = np.array([ref[s, t][lev] for s, t, lev in obs])
        # atol: below 1e-12 ng/mL (the 1-compartment parent's tail reaches 1e-22) LSODA's
        # absolute tolerance, not the closed form, limits the agreement.
        np.testing.assert_allclose(conc, expected, rtol=1e-6, atol=1e-12)


def test_matches_the_simulator_for_both_enantiomers():
    """The virtual trial's own ODE solution (racemate split 1:1, 2-cmt + NK + HNK)."""
    from ketamine_pmx.simulate import Dose, integrate_pk

    ind = {}
    chains = {}
    for e, (cl, vc, q, vp, cl_nk, cl_hnk) in {
        "S": (85.0, 110.0, 130.0, 190.0, 70.0, 35.0),
        "R": (74.0, 100.0, 120.0, 170.0, 60.0, 20.0),
    }.items():
        vals = dict(cl=cl, clf=0.8 * cl, vc=vc, q=q, vp=vp, cl_nk=cl_nk, v_nk=250.0)
        vals.update(fm_hnk=0.75, cl_hnk=cl_hnk, v_hnk=115.0)
        ind.update({f"{e}_{k}": v for k, v in vals.items()})
        chains[e] = dict(
            cl=cl,
            vc=vc,
            q=q,
            vp=vp,
            metabolites=(
                Metabolite(cl_m=cl_nk, v_m=250.0, r=R_NK, cl_f=0.8 * cl),
                Metabolite(cl_m=cl_hnk, v_m=115.0, r=R_HNK, fm=0.75),
            ),
        )
    doses = [Dose(24.0 * d, 4.0 * r, r, "KET") for d, r in enumerate([10, 15, 20, 20, 20])]
    times = np.array([1.0, 4.0, 5.0, 28.0, 100.0, 110.0, 130.0, 200.0])
    sim = integrate_pk(ind, doses, times, MOLAR_MASS_G_MOL, rtol=1e-11, atol=1e-14)
    for k, e in enumerate(("S", "R")):
        layout = build_layout(
            dose_subject=np.zeros(len(doses), int),
            dose_time_h=[d.time for d in doses],
            dose_amt_mg=[0.5 * d.amt for d in doses],
            dose_rate_mg_h=[0.5 * d.rate for d in doses],
            obs_subject=np.zeros(3 * len(times), int),
            obs_time_h=np.repeat(times, 3),
            obs_level=np.tile([0, 1, 2], len(times)),
        )
        conc = np_conc_ng_ml(layout, **chains[e]).reshape(len(times), 3)
        # simulate.PK_ANALYTES: S_KET, R_KET, S_NK, R_NK, S_HNK, R_HNK
        np.testing.assert_allclose(conc, sim.conc[:, [k, 2 + k, 4 + k]], rtol=1e-6)


def test_post_infusion_form_keeps_precision_in_the_terminal_phase():
    """Days after a short infusion G(t) - G(t - T) cancels; the Leibniz form does not."""
    cl, vc, rate, t_inf = 85.0, 110.0, 52.5, 40 / 60
    times = np.array([24.0, 48.0, 72.0])
    layout = build_layout(
        dose_subject=[0],
        dose_time_h=[0.0],
        dose_amt_mg=[rate * t_inf],
        dose_rate_mg_h=[rate],
        obs_subject=[0, 0, 0],
        obs_time_h=times,
    )
    ours = np_conc_ng_ml(layout, cl=cl, vc=vc)
    with mp.workdps(50):
        k = mp.mpf(cl) / vc
        exact = [rate * (mp.exp(-k * (t - t_inf)) - mp.exp(-k * t)) / k / vc * 1000 for t in times]
    for value, want in zip(ours, exact, strict=True):
        assert relative_error(value, want) < 1e-12
    k = cl / vc
    step = np_exp_conv(times, [k, 0.0]) - np_exp_conv(times - t_inf, [k, 0.0])
    textbook = rate * step / vc * 1000
    assert relative_error(textbook[1], exact[1]) > 1e-3  # all digits lost after two days


# --------------------------------------------------------------------------------------
# 2. Values and gradients of E (and of a full concentration) against mpmath
# --------------------------------------------------------------------------------------


def test_mpmath_reference_is_the_divided_difference():
    """The matrix-exponential reference equals (-1)^n f[x_0..x_n], f = exp(-x t)."""
    t, nodes = 3.0, [0.2, 0.5, 1.3, 0.01]
    with mp.workdps(50):
        x = [mp.mpf(v) for v in nodes]
        dd = mp.fsum(
            mp.exp(-xi * t) / mp.fprod(xl - xi for ell, xl in enumerate(x) if ell != i)
            for i, xi in enumerate(x)
        )
        assert abs(mp_exp_conv(t, nodes) - dd) < mp.mpf(10) ** -40
        d_t, d_x = mp_exp_conv_grad(t, nodes)
        assert abs(mp.diff(lambda v: mp_exp_conv(t, [v, *nodes[1:]]), x[0]) - d_x[0]) < 1e-30
        assert abs(mp.diff(lambda s: mp_exp_conv(s, nodes), t) - d_t) < 1e-30


@pytest.mark.parametrize("gap", GAPS)
@pytest.mark.parametrize("kind", CASES)
def test_exp_conv_value_and_gradient_match_mpmath(exp_conv_fns, kind, gap):
    t, nodes = case_nodes(kind, gap)
    ref = mp_exp_conv(t, nodes)
    ref_t, ref_x = mp_exp_conv_grad(t, nodes)
    value, *d_x = (o[0] for o in exp_conv_fns(t, nodes))
    assert relative_error(value, ref) < 1e-12
    assert relative_error(np_exp_conv(t, nodes), ref) < 1e-12
    for got, want in zip(d_x, ref_x, strict=True):
        assert relative_error(got, want) < 1e-10
    if len(nodes) <= 3:  # the variant with t symbolic (dE/dt as well)
        value, d_t, *d_x = (o[0] for o in exp_conv_fns(t, nodes, with_dt=True))
        assert relative_error(value, ref) < 1e-12
        assert relative_error(d_t, ref_t) < 1e-10
        for got, want in zip(d_x, ref_x, strict=True):
            assert relative_error(got, want) < 1e-10


CHAIN_NAMES = ("cl", "vc", "q", "vp", "cl_nk", "cl_hnk")
CHAIN_POINT = {"cl": 85.0, "vc": 110.0, "q": 130.0, "vp": 190.0, "cl_hnk": 35.0}
V_NK, V_HNK, RATE, T_INF = 250.0, 115.0, 52.5, 2 / 3
CHAIN_OBS = [(0.5, 1), (0.5, 2), (30.0, 1), (30.0, 2)]  # (time h, level): infusing, after


@pytest.fixture(scope="module")
def chain_fn():
    """Compiled concentrations and their Jacobian: 2-cmt parent infused 40 min, NK, HNK."""
    layout = build_layout(
        dose_subject=[0],
        dose_time_h=[0.0],
        dose_amt_mg=[RATE * T_INF],
        dose_rate_mg_h=[RATE],
        obs_subject=np.zeros(len(CHAIN_OBS), int),
        obs_time_h=[t for t, _ in CHAIN_OBS],
        obs_level=[lev for _, lev in CHAIN_OBS],
    )
    sym = {k: pt.dscalar(k) for k in CHAIN_NAMES}
    conc = pt_conc_ng_ml(
        layout,
        cl=sym["cl"],
        vc=sym["vc"],
        q=sym["q"],
        vp=sym["vp"],
        metabolites=(
            Metabolite(sym["cl_nk"], V_NK, r=R_NK, cl_f=0.8 * sym["cl"]),
            Metabolite(sym["cl_hnk"], V_HNK, r=R_HNK, fm=0.75),
        ),
    )
    jac = pytensor.gradient.jacobian(conc, list(sym.values()))
    return pytensor.function(list(sym.values()), [conc, *jac])


def mp_chain_conc(p: dict, t: float, level: int):
    """The same chain by the matrix exponential of the augmented system (input as a state)."""
    with mp.workdps(max(mp.mp.dps, 30)):
        k10, k12, k21 = p["cl"] / p["vc"], p["q"] / p["vc"], p["q"] / p["vp"]
        k_nk, k_h = p["cl_nk"] / V_NK, p["cl_hnk"] / V_HNK
        a = mp.zeros(5, 5)  # central, peripheral, NK, HNK, infusion rate (constant)
        a[0, 0], a[0, 1], a[1, 0], a[1, 1] = -(k10 + k12), k21, k12, -k21
        a[2, 0], a[2, 2] = 0.8 * k10 * R_NK, -k_nk
        a[3, 2], a[3, 3] = 0.75 * k_nk * R_HNK, -k_h
        a[0, 4] = 1
        state = mp.expm(a * min(t, T_INF)) * mp.matrix([0, 0, 0, 0, RATE])
        if t > T_INF:
            state[4] = 0
            state = mp.expm(a * (t - T_INF)) * state
        return state[1 + level] / (V_NK if level == 1 else V_HNK) * 1000


@pytest.mark.parametrize("gap", GAPS)
def test_concentration_and_gradient_match_mpmath_near_coincidence(chain_fn, gap):
    """NK's elimination rate k_nk = beta (1 + gap), beta the parent's terminal rate."""
    (beta, _), _ = np_disposition(85.0, 110.0, 130.0, 190.0)
    point = {**CHAIN_POINT, "cl_nk": float(beta) * (1 + gap) * V_NK}
    values, *grads = chain_fn(*(point[k] for k in CHAIN_NAMES))
    with mp.workdps(30):
        mp_point = {k: mp.mpf(v) for k, v in point.items()}
        for i, (t, level) in enumerate(CHAIN_OBS):
            assert relative_error(values[i], mp_chain_conc(mp_point, t, level)) < 1e-11
            for g, name in zip(grads, CHAIN_NAMES, strict=True):

                def along(v, name=name, t=t, level=level):
                    return mp_chain_conc({**mp_point, name: v}, t, level)

                want = mp.diff(along, mp_point[name])
                assert abs(g[i] - want) <= 1e-9 * abs(want) + 1e-14 * values[i], (name, t, level)


# --------------------------------------------------------------------------------------
# 3. Gradients of the concentrations at generic points (central differences)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_cmt", [2, 3])
def test_gradient_matches_central_differences(n_cmt):
    layout, _ = regimen_layout(2)
    names = ["cl", "vc", "q", "vp", "ka", "f_bio", "cl_f", "cl_nk", "v_nk", "fm", "cl_hnk"]
    names += ["v_hnk", "r_nk"] + (["q2", "vp2"] if n_cmt == 3 else [])
    rng = np.random.default_rng(7)
    base = ketamine_params(3)
    point = {
        "cl": 85.0, "vc": 110.0, "q": 130.0, "vp": 190.0, "ka": 1.2, "f_bio": 0.2,
        "cl_f": 60.0, "cl_nk": 70.0, "v_nk": 250.0, "fm": 0.75, "cl_hnk": 35.0,
        "v_hnk": 115.0, "r_nk": R_NK, "q2": base["q2"], "vp2": base["vp2"],
    }  # fmt: skip
    point = {k: v * np.exp(0.2 * rng.standard_normal(5)) for k, v in point.items() if k in names}
    weights = rng.uniform(0.5, 1.5, layout.n_obs)

    def conc(p, backend):
        fn = np_conc_ng_ml if backend == "np" else pt_conc_ng_ml
        extra = {"q2": p["q2"], "vp2": p["vp2"]} if n_cmt == 3 else {}
        return fn(
            layout,
            cl=p["cl"],
            vc=p["vc"],
            q=p["q"],
            vp=p["vp"],
            ka=p["ka"],
            f_bio=p["f_bio"],
            metabolites=(
                Metabolite(p["cl_nk"], p["v_nk"], r=p["r_nk"], cl_f=p["cl_f"]),
                Metabolite(p["cl_hnk"], p["v_hnk"], r=R_HNK, fm=p["fm"]),
            ),
            **extra,
        )

    sym = {k: pt.dvector(k) for k in names}
    objective = (weights * pt.log(conc(sym, "pt"))).sum()
    grad = pytensor.grad(objective, list(sym.values()))
    f = pytensor.function(list(sym.values()), grad, mode=QUICK)
    grads = dict(zip(names, f(*point.values()), strict=True))
    # Directional central differences of the numpy reference, one direction per parameter
    # vector (a random combination of its 5 subjects' entries).
    for name in names:
        direction = rng.uniform(-1.0, 1.0, 5) * point[name]
        h = 1e-6
        up = {**point, name: point[name] + h * direction}
        down = {**point, name: point[name] - h * direction}
        fd = (weights * (np.log(conc(up, "np")) - np.log(conc(down, "np")))).sum() / (2 * h)
        assert grads[name] @ direction == pytest.approx(fd, rel=1e-6, abs=1e-8), name


def test_verify_grad_of_a_two_compartment_chain():
    layout, _ = regimen_layout(1)
    rng = np.random.default_rng(3)

    def fn(cl, vc, q, vp, cl_nk):
        return pt.log(
            pt_conc_ng_ml(
                layout,
                cl=cl,
                vc=vc,
                q=q,
                vp=vp,
                ka=1.2,
                f_bio=0.2,
                metabolites=[Metabolite(cl_nk, 250.0, r=R_NK, cl_f=0.8 * cl)],
            )
        )

    point = [v * np.exp(0.1 * rng.standard_normal(5)) for v in (85.0, 110.0, 130.0, 190.0, 70.0)]
    pytensor.gradient.verify_grad(
        fn, point, rng=rng, eps=1e-6, abs_tol=1e-6, rel_tol=1e-6, mode=QUICK
    )


# --------------------------------------------------------------------------------------
# 4. The textbook formula fails where ours does not
# --------------------------------------------------------------------------------------


def test_naive_formula_gradient_is_wrong_at_gap_1e_7_and_ours_is_right(exp_conv_fns):
    t, nodes = case_nodes("pair k_nk ~ beta", 1e-7)
    x = [pt.dvector("a"), pt.dvector("b")]
    naive = pt_exp_conv_naive(pt.as_tensor(np.array([t])), x)
    f_naive = pytensor.function(x, pytensor.grad(naive.sum(), x), mode=QUICK)
    got_naive = [g[0] for g in f_naive(*(np.array([v]) for v in nodes))]
    got_ours = [o[0] for o in exp_conv_fns(t, nodes)[1:]]
    _, want = mp_exp_conv_grad(t, nodes)
    naive_err = max(relative_error(g, w) for g, w in zip(got_naive, want, strict=True))
    ours_err = max(relative_error(g, w) for g, w in zip(got_ours, want, strict=True))
    assert naive_err > 1e-4  # the value is still right to ~1e-9 ...
    assert relative_error(np_exp_conv_naive(t, nodes), mp_exp_conv(t, nodes)) < 1e-7
    assert ours_err < 1e-12  # ... but its autodiff gradient is not


# --------------------------------------------------------------------------------------
# 5. Properties (numpy reference; hypothesis)
# --------------------------------------------------------------------------------------

rates = st.floats(0.01, 3.0)
near = st.sampled_from([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 1.0])


@st.composite
def chain_params(draw):
    """1-3 compartments, 0-2 metabolites, with near-coincident rates drawn on purpose."""
    n_cmt, n_met = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    cl, vc = draw(st.floats(5.0, 200.0)), draw(st.floats(10.0, 300.0))
    kw = {"cl": cl, "vc": vc, "ka": cl / vc * (1 + draw(near)), "f_bio": draw(st.floats(0.1, 1))}
    if n_cmt >= 2:
        kw.update(q=draw(st.floats(1.0, 200.0)), vp=draw(st.floats(10.0, 400.0)))
    if n_cmt == 3:
        kw.update(q2=draw(st.floats(0.5, 50.0)), vp2=draw(st.floats(10.0, 800.0)))
    (lam, *_), _ = np_disposition(cl, vc, kw.get("q"), kw.get("vp"), kw.get("q2"), kw.get("vp2"))
    mets, k_prev = [], float(lam)
    for _ in range(n_met):
        v_m = draw(st.floats(20.0, 400.0))
        k_m = k_prev * (1 + draw(near)) if draw(st.booleans()) else draw(rates)
        mets.append(Metabolite(k_m * v_m, v_m, r=0.94, fm=draw(st.floats(0.1, 1.0))))
        k_prev = k_m
    kw["metabolites"] = mets
    return kw, n_met


@st.composite
def dose_events(draw):
    n = draw(st.integers(1, 3))
    return [
        (
            draw(st.floats(0.0, 48.0)),
            draw(st.floats(1.0, 100.0)),
            draw(st.sampled_from([0.0, 5.0, 40.0])),
            draw(st.sampled_from(["central", "depot"])),
        )
        for _ in range(n)
    ]


def conc_for(doses, times, kw, n_met):
    doses = [(t, a, r if route == "central" else 0.0, route) for t, a, r, route in doses]
    layout = build_layout(
        dose_subject=np.zeros(len(doses), int),
        dose_time_h=[d[0] for d in doses],
        dose_amt_mg=[d[1] for d in doses],
        dose_rate_mg_h=[d[2] for d in doses],
        dose_route=[d[3] for d in doses],
        obs_subject=np.zeros(len(times) * (n_met + 1), int),
        obs_time_h=np.repeat(times, n_met + 1),
        obs_level=np.tile(np.arange(n_met + 1), len(times)),
    )
    return np_conc_ng_ml(layout, **kw)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMES = np.array([0.0, 0.5, 3.0, 12.0, 30.0, 49.0, 100.0, 400.0])


@PROPERTY
@given(chain_params(), dose_events(), dose_events())
def test_superposition(params, first, second):
    kw, n_met = params
    both = conc_for(first + second, TIMES, kw, n_met)
    parts = conc_for(first, TIMES, kw, n_met) + conc_for(second, TIMES, kw, n_met)
    np.testing.assert_allclose(both, parts, rtol=1e-12, atol=1e-300)


@PROPERTY
@given(chain_params(), dose_events(), st.floats(0.01, 100.0))
def test_dose_proportionality(params, doses, factor):
    kw, n_met = params
    scaled = [(t, a * factor, r * factor, route) for t, a, r, route in doses]
    np.testing.assert_allclose(
        conc_for(scaled, TIMES, kw, n_met),
        factor * conc_for(doses, TIMES, kw, n_met),
        rtol=1e-12,
        atol=1e-300,
    )


@PROPERTY
@given(chain_params(), dose_events())
def test_concentrations_are_finite_and_non_negative(params, doses):
    kw, n_met = params
    conc = conc_for(doses, TIMES, kw, n_met)
    assert np.all(np.isfinite(conc))
    assert np.all(conc >= 0)


@PROPERTY
@given(
    st.lists(rates | st.just(0.0), min_size=1, max_size=5),
    st.floats(0.0, 500.0),
    st.floats(-50.0, 0.0),
)
def test_exp_conv_non_negative_and_zero_before_the_dose(nodes, t_pos, t_neg):
    assert np_exp_conv(t_neg, nodes) == 0.0
    value = np_exp_conv(t_pos, nodes)
    assert np.isfinite(value)
    assert value >= 0
    # E is bounded by the convolution of the slowest node with itself: t^n/n! exp(-x_min t)
    n = len(nodes) - 1
    bound = t_pos**n / np.prod(np.arange(1, n + 1)) * np.exp(-min(nodes) * t_pos)
    assert value <= bound * (1 + 1e-12)


def test_exp_conv_before_dose_is_zero_with_zero_finite_gradient(exp_conv_fns):
    t = [0.0, -1.0, -1e-300, -0.0]
    for n in range(1, 6):
        for nodes in ([0.3] * n, [0.0] * n, [0.1 * k for k in range(n)]):
            for o in exp_conv_fns(t, nodes):
                assert np.all(o == 0.0), (n, nodes)
    for o in exp_conv_fns(t, [0.3, 0.3], with_dt=True):
        assert np.all(o == 0.0)


# --------------------------------------------------------------------------------------
# 6. numpy reference == PyTensor; disposition; layout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_cmt", "n_met"), [(1, 2), (2, 1), (3, 2)])
def test_numpy_and_pytensor_agree(n_cmt, n_met):
    layout, _ = regimen_layout(n_met)
    kw = as_kwargs([ketamine_params(n_cmt, s) for s in SCALES], n_met)
    expected = np_conc_ng_ml(layout, **kw)
    got = pt_conc_ng_ml(layout, **kw).eval()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_compiled_functions_survive_cloudpickle(chain_fn):
    """PyMC sends compiled functions to parallel chains with cloudpickle."""
    cloudpickle = pytest.importorskip("cloudpickle")
    args = [CHAIN_POINT.get(k, 20.0) for k in CHAIN_NAMES]
    copy = cloudpickle.loads(cloudpickle.dumps(chain_fn))
    for a, b in zip(copy(*args), chain_fn(*args), strict=True):
        np.testing.assert_array_equal(a, b)


def test_disposition_matches_the_eigen_decomposition():
    for cl, vc, q, vp, q2, vp2 in [
        (85.0, 110.0, 130.0, 190.0, 20.0, 400.0),
        (10.0, 50.0, 1e-3, 10.0, 3.0, 30.0),
        (85.0, 110.0, 130.0, 190.0, None, None),
    ]:
        k = [[-(cl + q + (q2 or 0)) / vc, q / vp], [q / vc, -q / vp]]
        mat = np.array(k)
        if q2 is not None:
            mat = np.pad(mat, ((0, 1), (0, 1)))
            mat[0, 2], mat[2, 0], mat[2, 2] = q2 / vp2, q2 / vc, -q2 / vp2
        lam, w = np_disposition(cl, vc, q, vp, q2, vp2)
        vals, vecs = np.linalg.eig(-mat)
        order = np.argsort(vals)
        w_ref = vecs[0, order] * np.linalg.inv(vecs)[order, 0]
        np.testing.assert_allclose(np.array(lam, float), vals[order], rtol=1e-12)
        np.testing.assert_allclose(np.array(w, float), w_ref, rtol=1e-9)
        assert np.all(np.array(w, float) > 0)
        assert np.sum(w) == pytest.approx(1.0, rel=1e-14)
        lam_pt, w_pt = pt_disposition(cl, vc, q, vp, q2, vp2)
        got = pytensor.function([], [*lam_pt, *w_pt], mode=QUICK)()
        np.testing.assert_allclose(got, np.array([*lam, *w], float), rtol=1e-14)


def test_layout_prunes_pairs_and_splits_infusions():
    layout = build_layout(
        dose_subject=[0, 0, 1],
        dose_time_h=[0.0, 10.0, 0.0],
        dose_amt_mg=[10.0, 10.0, 5.0],
        dose_rate_mg_h=[5.0, 0.0, 0.0],
        dose_route=["central", "central", "depot"],
        obs_subject=[0, 0, 0, 1, 1],
        obs_time_h=[0.0, 1.0, 10.0, 0.0, 2.0],
        obs_level=[0, 1, 0, 0, 0],
        n_subject=3,
    )
    # obs at t = 0 and the bolus at t = 10 coinciding with an observation do not count.
    assert len(layout.terms["infusing"]) == 1  # (t=1, infusion still running)
    assert len(layout.terms["post"]) == 1  # (t=10, infusion ended at 2 h)
    assert len(layout.terms["bolus"]) == 0
    assert len(layout.terms["depot"]) == 1
    np.testing.assert_allclose(layout.terms["post"].dt_h, [8.0])
    np.testing.assert_allclose(layout.inf_duration_h, [2.0])
    conc = np_conc_ng_ml(
        layout, cl=5.0, vc=50.0, ka=1.0, f_bio=0.5, metabolites=[Metabolite(2.0, 20.0, fm=0.5)]
    )
    assert conc[0] == 0.0 and conc[3] == 0.0  # no dose yet
    assert np.all(conc[[1, 2, 4]] > 0)


def test_repeated_infusions_share_their_end_of_infusion_state():
    """Infusions of one subject with the same duration get one end-of-infusion state, and the
    concentrations equal the sum of the doses given one at a time."""
    doses = {  # subject 0: three 2-h infusions (two at one rate) and a 1-h one; subject 1: one
        "dose_subject": [0, 0, 0, 0, 1],
        "dose_time_h": [0.0, 24.0, 48.0, 72.0, 0.0],
        "dose_amt_mg": [10.0, 10.0, 20.0, 10.0, 10.0],
        "dose_rate_mg_h": [5.0, 5.0, 10.0, 10.0, 5.0],
    }
    obs = {
        "obs_subject": [0, 0, 0, 1],
        "obs_time_h": [30.0, 60.0, 80.0, 5.0],
        "obs_level": [0, 1, 2, 2],
    }
    layout = build_layout(**doses, **obs)
    assert len(layout.terms["post"]) == 2 + 3 + 4 + 1
    np.testing.assert_array_equal(layout.inf_subject, [0, 0, 1])
    np.testing.assert_allclose(layout.inf_duration_h, [1.0, 2.0, 2.0])
    params = {
        "cl": 85.0,
        "vc": 110.0,
        "q": 130.0,
        "vp": 190.0,
        "metabolites": [Metabolite(70.0, 250.0, cl_f=68.0), Metabolite(35.0, 115.0, fm=0.75)],
    }
    separate = sum(
        np_conc_ng_ml(
            build_layout(**{k: [v[i]] for k, v in doses.items()}, **obs, n_subject=2), **params
        )
        for i in range(5)
    )
    np.testing.assert_allclose(np_conc_ng_ml(layout, **params), separate, rtol=1e-13)
    # The layout's arrays become constants of the compiled log density; a strided one is a
    # numba "dynamic global", which makes the whole compiled function uncacheable on disk.
    arrays = [layout.obs_subject, layout.obs_level, layout.inf_subject, layout.inf_duration_h]
    arrays += [getattr(ts, f) for ts in layout.terms.values() for f in ts.__dataclass_fields__]
    assert all(a.flags.c_contiguous for a in arrays)
    # And whatever a layout holds, the graph's constants are contiguous copies.
    strided = np.repeat(layout.inf_duration_h, 2)[::2]
    assert not strided.flags.c_contiguous
    conc = pt_conc_ng_ml(dataclasses.replace(layout, inf_duration_h=strided), **params)
    constants = [v for v in graph_inputs([conc]) if isinstance(v, Constant) and v.data.ndim]
    assert constants and all(c.data.flags.c_contiguous for c in constants)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dose_route": [""]}, "route names"),
        ({"obs_level": [4]}, "obs_level"),
        ({"obs_subject": [2], "n_subject": 2}, "indices must lie in"),
        ({"dose_amt_mg": [-1.0]}, ">= 0"),
        ({"dose_time_h": [np.nan]}, "finite"),
    ],
)
def test_layout_rejects_invalid_events(overrides, message):
    args = dict(dose_subject=[0], dose_time_h=[0.0], dose_amt_mg=[1.0], obs_subject=[0])
    args.update(obs_time_h=[1.0])
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        build_layout(**args)


def test_model_checks_its_arguments():
    layout = build_layout(
        dose_subject=[0], dose_time_h=[0.0], dose_amt_mg=[1.0], obs_subject=[0],
        obs_time_h=[1.0], obs_level=[1], dose_route="depot",
    )  # fmt: skip
    met = Metabolite(1.0, 10.0, cl_f=0.5)
    with pytest.raises(ValueError, match="only 0 metabolite"):
        np_conc_ng_ml(layout, cl=1.0, vc=10.0, ka=1.0, f_bio=1.0)
    with pytest.raises(ValueError, match="need ka and f_bio"):
        np_conc_ng_ml(layout, cl=1.0, vc=10.0, metabolites=[met])
    with pytest.raises(ValueError, match="q with vp"):
        np_conc_ng_ml(layout, cl=1.0, vc=10.0, q=1.0, ka=1.0, f_bio=1.0, metabolites=[met])
    with pytest.raises(ValueError, match="exactly one of cl_f"):
        Metabolite(1.0, 10.0)
    with pytest.raises(ValueError, match="expected 1 values"):
        np_conc_ng_ml(layout, cl=[1.0, 2.0], vc=10.0, ka=1.0, f_bio=1.0, metabolites=[met])
