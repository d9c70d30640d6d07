"""Doses into the metabolite chain (``Route.level``) against an independent ODE simulation.

The reference integrates the linear system (2-compartment parent, metabolite 1, metabolite 2,
one depot or transit chain per absorption route) with scipy's ``solve_ivp`` event by event. A
dose of A mg into level j puts A mg (times f) into metabolite j's compartment or its depot; an
SS=1 record is a long train of the record's dose from empty compartments, its state at the
record's time replacing what the subject has.
"""

from __future__ import annotations

import math

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy.integrate import solve_ivp

from ketamine_pmx.pk import Metabolite, Route, build_layout, np_conc_ng_ml, pt_conc_ng_ml

CL, VC, Q, VP = 5.0, 50.0, 20.0, 80.0
METABOLITES = [Metabolite(cl_m=3.0, v_m=30.0, r=1.1, cl_f=2.0), Metabolite(cl_m=4.0, v_m=20.0, r=0.9, fm=0.5)]  # fmt: skip
ROUTES = {
    "iv": Route(),
    "nk": Route(level=1, f=0.8, lag=0.5),
    "nk_oral": Route(level=1, ka=1.3, f=0.6),
    "hnk": Route(level=2),
    "hnk_oral": Route(level=2, ka=0.9, n_transit=2, ktr=1.5, lag=0.4),
}
RTOL_ODE, ATOL_ODE = 1e-10, 1e-13
DECAY = 46.0  # steady-state trains run until the slowest mode has decayed by e^-46


def dose(time, amt, route, rate=0.0, ss=0, ii=0.0):
    return dict(time=time, amt=amt, route=route, rate=rate, ss=ss, ii=ii)


SUBJECTS = {
    "boluses and infusions into NK and HNK, with a parent dose": (
        [dose(0.0, 100.0, "nk"), dose(5.0, 30.0, "hnk", rate=10.0), dose(10.0, 50.0, "iv")],
        [0.2, 0.6, 2.0, 6.0, 7.0, 9.0, 11.0, 24.0, 48.0],
    ),
    "depots in front of NK and HNK": (
        [
            dose(0.0, 100.0, "nk_oral"),
            dose(3.0, 80.0, "hnk_oral"),
            dose(6.0, 40.0, "nk_oral", rate=20.0),
        ],
        [0.5, 2.0, 3.2, 5.0, 7.0, 8.5, 12.0, 30.0],
    ),
    "SS=1 into NK (infusion) and HNK (depot)": (
        [
            dose(0.0, 60.0, "nk", rate=15.0, ss=1, ii=12.0),
            dose(20.0, 50.0, "hnk_oral", ss=1, ii=8.0),
        ],
        [1.0, 4.0, 6.0, 11.0, 19.0, 21.0, 25.0, 40.0],
    ),
}


class System:
    """x' = A x + b: central, peripheral, metabolites 1 and 2, then per absorption route its
    transit compartments and depot."""

    def __init__(self) -> None:
        m1, m2 = METABOLITES
        kf1, k1 = m1.cl_f / VC, m1.cl_m / m1.v_m
        kf2, k2 = m2.fm * k1, m2.cl_m / m2.v_m
        self.entry, n = {}, 4
        for name, route in ROUTES.items():
            if route.ka is None:
                self.entry[name] = (0, 2, 3)[route.level]
            else:
                self.entry[name] = n
                n += route.n_transit + 1
        a = np.zeros((n, n))
        a[0, 0], a[0, 1], a[1, 0], a[1, 1] = -(CL / VC + Q / VC), Q / VP, Q / VC, -Q / VP
        a[2, 0], a[2, 2] = m1.r * kf1, -k1
        a[3, 2], a[3, 3] = m2.r * kf2, -k2
        for name, route in ROUTES.items():
            if route.ka is None:
                continue
            rates = [route.ktr] * route.n_transit + [route.ka]
            for i, k in enumerate(rates):
                s = self.entry[name] + i
                a[s, s] = -k
                a[s + 1 if i + 1 < len(rates) else (0, 2, 3)[route.level], s] += k
        self.a, self.n = a, n
        self.slowest = float(np.min(np.abs(np.linalg.eigvals(a).real)))

    def inputs(self, d: dict) -> list[tuple[float, float | None, int, float]]:
        """(start, stop or None for a bolus, state, mg or mg/h) of one plain dose."""
        r = ROUTES[d["route"]]
        start, amount = d["time"] + r.lag, r.f * d["amt"]
        if d["rate"] > 0:
            return [(start, start + amount / d["rate"], self.entry[d["route"]], d["rate"])]
        return [(start, None, self.entry[d["route"]], amount)]

    def run(self, x, t0, inputs, stops):
        """States at each time of ``stops`` (before a bolus of that time), from ``x`` at t0."""
        times = sorted({t0, *stops, *(i[0] for i in inputs), *(i[1] for i in inputs if i[1])})
        x, t, out = np.array(x, float), t0, {}
        for tb in times:
            if tb > t:
                b = np.zeros(self.n)
                for start, stop, cmt, v in inputs:
                    if stop is not None and start <= t and stop >= tb:
                        b[cmt] += v
                sol = solve_ivp(
                    lambda _t, y, b=b: self.a @ y + b, (t, tb), x, method="LSODA",
                    rtol=RTOL_ODE, atol=ATOL_ODE, jac=lambda _t, _y: self.a,
                )  # fmt: skip
                assert sol.success, sol.message
                x, t = sol.y[:, -1].copy(), tb
            if tb in stops:
                out[tb] = x.copy()
            for start, stop, cmt, v in inputs:
                if stop is None and start == tb:
                    x[cmt] += v
        return out

    def simulate(self, doses: list[dict], obs: list[float]) -> dict:
        """States at ``obs``: segments between SS=1 records (each one resets the subject)."""
        bounds = [d["time"] for d in doses if d["ss"] == 1]
        out: dict[float, np.ndarray] = {}
        x, t0 = np.zeros(self.n), min(d["time"] for d in doses) - 1.0
        edges = [*bounds, math.inf]
        for seg in range(len(edges)):
            lo = t0 if seg == 0 else edges[seg - 1]
            hi = edges[seg]
            inputs = [i for d in doses if lo <= d["time"] < hi for i in self.inputs(d)]
            if seg > 0:  # the steady state of the SS=1 record at lo
                ss = next(d for d in doses if d["ss"] == 1 and d["time"] == lo)
                n_back = math.ceil(DECAY / self.slowest / ss["ii"]) + 2
                train = [i for k in range(1, n_back) for i in self.inputs({**ss, "time": lo - k * ss["ii"]})]  # fmt: skip
                x = self.run(np.zeros(self.n), lo - n_back * ss["ii"], train, [lo])[lo]
                # the train's infusions still running at lo continue
                inputs += [(lo, stop, c, v) for s, stop, c, v in train if stop and stop > lo]
            stops = [t for t in obs if lo <= t < hi]
            if hi < math.inf:
                stops.append(hi)
            seen = self.run(x, lo, inputs, stops)
            out |= {t: seen[t] for t in obs if t in seen}
            if hi < math.inf:
                x = seen[hi]
        return out


def layout_of(doses: list[dict], obs_t: np.ndarray, level: np.ndarray):
    col = {k: np.array([d[k] for d in doses]) for k in doses[0]}
    return build_layout(
        dose_subject=np.zeros(len(doses), int), dose_time_h=col["time"], dose_amt_mg=col["amt"],
        dose_rate_mg_h=col["rate"], dose_route=col["route"], dose_ss=col["ss"],
        dose_ii_h=col["ii"], dose_timing_modelled=True, obs_subject=np.zeros(obs_t.size, int),
        obs_time_h=obs_t, obs_level=level, n_subject=1,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_doses_into_metabolites_match_the_ode_simulation(name):
    doses, obs = SUBJECTS[name]
    system = System()
    seen = system.simulate(doses, obs)
    obs_t = np.repeat(np.array(obs), 3)
    level = np.tile(np.arange(3), len(obs))
    volumes = [VC, METABOLITES[0].v_m, METABOLITES[1].v_m]
    want = np.array([1000.0 * seen[t][(0, 2, 3)[lv]] / volumes[lv] for t, lv in zip(obs_t, level, strict=True)])  # fmt: skip
    got = np_conc_ng_ml(layout_of(doses, obs_t, level), cl=CL, vc=VC, q=Q, vp=VP, metabolites=METABOLITES, routes=ROUTES)  # fmt: skip
    scale = np.array([np.abs(want[level == lv]).max() for lv in level])
    # a level no dose reaches is 0 throughout
    err = np.abs(got - want) / (np.abs(want) + 1e-3 * scale + (scale == 0))
    worst = int(np.argmax(err))
    assert err[worst] < 1e-6, f"t {obs_t[worst]} level {level[worst]}: engine {got[worst]!r}, ODE {want[worst]!r}"  # fmt: skip
    assert np.all((want == 0) == (got == 0))


def test_a_metabolite_dose_reaches_no_level_above_it_and_not_the_parent():
    """A dose into HNK (level 2) leaves the parent and NK at 0; into NK, the parent at 0."""
    obs_t = np.repeat([1.0, 5.0], 3)
    level = np.tile(np.arange(3), 2)
    for route, zero_below in (("hnk", 2), ("nk", 1)):
        got = np_conc_ng_ml(layout_of([dose(0.0, 10.0, route)], obs_t, level), cl=CL, vc=VC, q=Q, vp=VP, metabolites=METABOLITES, routes=ROUTES)  # fmt: skip
        assert np.all(got[level < zero_below] == 0) and np.all(got[level >= zero_below] > 0)


def test_a_level_beyond_the_chain_is_refused_naming_the_route():
    layout = layout_of([dose(0.0, 10.0, "hnk")], np.array([1.0]), np.array([1]))
    with pytest.raises(ValueError, match=r"routes\['hnk'\]\.level"):
        np_conc_ng_ml(layout, cl=CL, vc=VC, metabolites=METABOLITES[:1], routes=ROUTES)
    with pytest.raises(ValueError, match=r"Route\.level"):
        Route(level=4)


@pytest.mark.slow  # compiles three dose kernels with their Jacobians
def test_pytensor_equals_numpy_with_finite_gradients():
    # the parent's parameters are data here: a kernel output no input reaches (the parent
    # level of the IV dose) must not upset the gradient
    doses = [dose(0.0, 100.0, "nk"), dose(10.0, 50.0, "iv"), dose(6.0, 40.0, "nk_oral", rate=20.0)]
    obs_t = np.repeat([1.0, 6.0, 8.0, 30.0], 3)
    level = np.tile(np.arange(3), 4)
    layout = layout_of(doses, obs_t, level)
    cl_m, ka, f = pt.dscalar("cl_m"), pt.dscalar("ka"), pt.dscalar("f")
    mets = [Metabolite(cl_m=cl_m, v_m=30.0, r=1.1, cl_f=2.0), METABOLITES[1]]
    routes = {**ROUTES, "nk_oral": Route(level=1, ka=ka, f=f)}
    conc = pt_conc_ng_ml(layout, cl=CL, vc=VC, q=Q, vp=VP, metabolites=mets, routes=routes)
    fn = pytensor.function([cl_m, ka, f], [conc, *pytensor.grad(conc.sum(), [cl_m, ka, f])])
    got, *grads = fn(3.0, 1.3, 0.6)
    want = np_conc_ng_ml(layout, cl=CL, vc=VC, q=Q, vp=VP, metabolites=METABOLITES, routes=ROUTES)  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert all(np.isfinite(g) and g != 0 for g in grads)
    h = 1e-6
    numeric = (fn(3.0, 1.3, 0.6 + h)[0].sum() - fn(3.0, 1.3, 0.6 - h)[0].sum()) / (2 * h)
    np.testing.assert_allclose(grads[2], numeric, rtol=1e-6)
