"""ketamine_pmx.pk's NONMEM dose records against an independent ODE simulation.

The reference integrates the whole linear system with scipy's ``solve_ivp`` (LSODA, rtol 1e-10)
event by event: a 2-compartment parent, two metabolites in sequence, and one depot (with a
transit chain where the route has one) per absorption route. It reads NONMEM-like records on its
own: ADDL written out as doses, lag, F (scaling a bolus, and the duration of a data-rate
infusion), modelled rate (RATE=-1) and duration (RATE=-2), infusions into a depot and into a
transit chain, EVID 3 and EVID 4, and steady-state records. A steady state is a long train of
the record's dose (lagged, infusions overlapping where they outlast II), simulated from empty
compartments until the slowest mode has decayed by e^-46, whose state and unfinished inputs at
the record's time replace (SS=1) or join (SS=2) what the subject has. An SS=1 record of amount 0
with a rate is the state of that infusion run to steady state, without further input.
Semantics the engine documents and the reference shares: a reset (EVID 3, EVID 4, SS=1) cancels
what earlier records would still add (lagged doses not yet given, running infusions); an
observation sees the events at its own time only where ``obs_after_events`` says so.
Steady-state doses whose lag exceeds II are included: NONMEM 7.4.3 is wrong there (see
``tests/test_pk_nmtest.py``), and this simulation is what checks the engine on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from ketamine_pmx.pk import Metabolite, Route, build_layout, expand_additional_doses, np_conc_ng_ml

CL, VC, Q, VP = 5.0, 50.0, 20.0, 80.0
METABOLITES = [Metabolite(cl_m=3.0, v_m=30.0, r=1.1, cl_f=2.0), Metabolite(cl_m=4.0, v_m=20.0, r=0.9, fm=0.5)]  # fmt: skip
ROUTES = {
    "iv": Route(),
    "central": Route(f=0.8, lag=0.7, rate=6.0, duration=3.0),
    "depot": Route(ka=1.2, f=0.7, lag=1.5),
    "transit": Route(ka=1.2, n_transit=3, ktr=1.2, lag=0.3),  # ktr == ka: coincident nodes
    "late": Route(f=0.9, lag=15.0),  # lag above II = 12
    "late_oral": Route(ka=0.8, lag=26.0),  # lag above 2 II
    "later": Route(lag=34.0),  # as in nmtest subject 825: lag 34 h, II 24 h
}
RTOL_ODE, ATOL_ODE = 1e-10, 1e-13  # mg
DECAY = 46.0  # steady-state trains run until the slowest mode has decayed by e^-46


def rec(time, amt=0.0, route="iv", rate=0.0, mode=0, ss=0, ii=0.0, addl=0, evid=1):
    """One NONMEM-like record (EVID 1 dose, 3 reset, 4 reset and dose)."""
    return dict(time=time, amt=amt, route=route, rate=rate, mode=mode, ss=ss, ii=ii, addl=addl, evid=evid)  # fmt: skip


# Each subject: its records and its observation times (``after``: times whose observation
# follows the events of that time).
SUBJECTS = {
    "ADDL, lag, F, EVID 3": dict(
        records=[
            rec(0.0, 100.0, "depot", ii=12.0, addl=3),
            rec(6.0, 50.0, "central", rate=10.0),  # F: lasts 0.8 * 50 / 10 = 4 h
            rec(29.5, 60.0, "depot"),  # acts at 31: cancelled by the reset at 30
            rec(30.0, evid=3),
            rec(40.0, 20.0),
        ],
        obs=[3.0, 8.0, 10.9, 13.0, 20.0, 29.0, 31.0, 37.0, 38.0, 45.0, 60.0],
    ),
    "SS=1 bolus with lag and F, SS=2 on top, ADDL": dict(
        records=[
            rec(0.0, 100.0, "central", rate=20.0),  # history wiped by the SS=1 record
            rec(24.0, 100.0, "central", ss=1, ii=12.0, addl=2),
            rec(30.0, 80.0, "depot", ss=2, ii=24.0),
        ],
        obs=[10.0, 24.5, 26.0, 31.0, 33.0, 40.0, 50.0, 55.0, 70.0],
    ),
    "SS=1 infusion longer than II, EVID 4": dict(
        records=[
            rec(0.0, 100.0, "central", rate=5.0, ss=1, ii=12.0),  # 16 h with F
            rec(14.0, 30.0, evid=4),  # stops the running infusions, then doses
        ],
        obs=[0.5, 5.0, 12.5, 13.9, 14.0, 15.0, 18.0, 30.0],
        after=[14.0],
    ),
    "modelled rate and duration": dict(
        records=[
            rec(0.0, 60.0, "central", mode=1),  # rate 6: 8 h with F
            rec(12.0, 40.0, "central", mode=2),  # 3 h
            rec(36.0, 50.0, "central", mode=2, ss=1, ii=12.0),
            rec(60.0, 50.0, "central", mode=1, ss=2, ii=6.0),  # 6.7 h, longer than II
        ],
        obs=[2.0, 9.0, 14.0, 20.0, 37.0, 40.0, 47.0, 61.0, 63.0, 70.0],
    ),
    "depot infusion, transit chain": dict(
        records=[
            rec(0.0, 100.0, "depot", rate=3.0),  # 23.3 h with F
            rec(5.0, 50.0, "transit"),
            rec(30.0, 40.0, "transit", rate=40.0),
            rec(48.0, 100.0, "depot", rate=10.0, ss=1, ii=12.0),
            rec(60.0, 50.0, "transit", ss=2, ii=12.0),
        ],
        obs=[3.0, 10.0, 26.0, 31.0, 35.0, 49.0, 52.0, 61.0, 65.0, 80.0],
    ),
    "SS with lag above II": dict(
        records=[
            rec(0.0, 100.0, "late", ss=1, ii=12.0),
            rec(30.0, 50.0, "late", rate=25.0, ss=1, ii=12.0),
            rec(60.0, 40.0, "late_oral", ss=2, ii=12.0),
            rec(100.0, 50.0, "late", rate=2.0, ss=1, ii=12.0),  # 22.5 h, longer than II
        ],
        obs=[1.0, 5.0, 14.0, 16.0, 29.0, 31.0, 44.0, 46.0, 61.0, 70.0, 90.0, 101.0, 110.0, 130.0],
    ),
    "SS=1 and SS=2 with lag above II, ADDL (as nmtest 825)": dict(
        records=[
            rec(0.0, 100.0, "later", rate=25.0, ss=1, ii=24.0),
            rec(12.0, 50.0, "later", rate=12.5, ss=2, ii=24.0),
            rec(24.0, 100.0, "later", rate=25.0, ss=1, ii=24.0, addl=2),
            rec(36.0, 50.0, "later", rate=12.5, ss=2, ii=24.0, addl=2),
        ],
        obs=[1.0, 8.0, 13.0, 20.0, 25.0, 37.0, 50.0, 70.0, 100.0, 130.0],
    ),
    "constant infusion at steady state": dict(
        records=[rec(2.0, 30.0), rec(10.0, 0.0, rate=8.0, ss=1)],
        obs=[5.0, 10.0, 11.0, 20.0, 40.0],
        after=[10.0],
    ),
}


# --------------------------------------------------------------------------------------
# The ODE reference
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """A bolus (``stop`` None; ``amount`` mg) or an infusion (``amount`` mg/h from ``start`` to
    ``stop``) into state ``cmt``, from a record dated ``dated`` (resets cancel earlier ones)."""

    dated: float
    start: float
    stop: float | None
    cmt: int
    amount: float


class System:
    """The linear ODE x' = A x + b: central, peripheral, metabolites 1 and 2, then per
    absorption route its transit compartments and depot."""

    def __init__(self) -> None:
        k10, k12, k21 = CL / VC, Q / VC, Q / VP
        m1, m2 = METABOLITES
        kf1, k1 = m1.cl_f / VC, m1.cl_m / m1.v_m
        kf2, k2 = m2.fm * m1.cl_m / m1.v_m, m2.cl_m / m2.v_m
        self.entry = {}
        n = 4
        for name, route in ROUTES.items():
            if route.ka is None:
                self.entry[name] = 0
            else:
                self.entry[name] = n
                n += route.n_transit + 1
        a = np.zeros((n, n))
        a[0, 0], a[0, 1], a[1, 0], a[1, 1] = -(k10 + k12), k21, k12, -k21
        a[2, 0], a[2, 2] = m1.r * kf1, -k1
        a[3, 2], a[3, 3] = m2.r * kf2, -k2
        for name, route in ROUTES.items():
            if route.ka is None:
                continue
            first = self.entry[name]
            rates = [route.ktr] * route.n_transit + [route.ka]
            for i, k in enumerate(rates):
                s = first + i
                a[s, s] = -k
                a[s + 1 if i + 1 < len(rates) else 0, s] += k
        self.a = a
        self.n = n
        self.slowest = float(np.min(np.abs(np.linalg.eigvals(a).real)))
        self.observed = [0, 2, 3]  # states of the chain levels 0, 1, 2
        self.volumes = [VC, m1.v_m, m2.v_m]

    def inputs(self, time: float, amt: float, route: str, rate: float, mode: int) -> Input:
        """The input of one dose record: lag, F, modelled rate or duration."""
        r = ROUTES[route]
        amount = r.f * amt
        start = time + r.lag
        if mode == 1:
            rate, duration = r.rate, amount / r.rate
        elif mode == 2:
            rate, duration = amount / r.duration, r.duration
        elif rate > 0:
            duration = amount / rate
        else:
            return Input(time, start, None, self.entry[route], amount)
        return Input(time, start, start + duration, self.entry[route], rate)

    def run(self, x0, t0, inputs, resets=(), jumps=(), obs=(), t_end=None):
        """Integrate from ``t0`` through every event; returns the state just before the events
        of ``t_end`` (or at the last event) and {(time, after): state} at the observations.

        ``jumps``: (time, state added, inputs added, reset first) of steady-state records.
        """
        inputs = list(inputs)
        for _, _, more, _ in jumps:
            inputs.extend(more)
        times = {t0, *(i.start for i in inputs), *(i.stop for i in inputs if i.stop is not None)}
        times |= {*resets, *(j[0] for j in jumps), *(t for t, _ in obs)}
        if t_end is not None:
            times = {t for t in times if t <= t_end} | {t_end}
        x, t, seen = np.array(x0, float), t0, {}
        active = list(inputs)
        for tb in sorted(times):
            if tb > t:
                b = np.zeros(self.n)
                for i in active:
                    if i.stop is not None and i.start <= t and i.stop >= tb:
                        b[i.cmt] += i.amount
                if np.any(x) or np.any(b):
                    sol = solve_ivp(
                        lambda _t, y, b=b: self.a @ y + b, (t, tb), x, method="LSODA",
                        rtol=RTOL_ODE, atol=ATOL_ODE, jac=lambda _t, _y: self.a,
                    )  # fmt: skip
                    assert sol.success, sol.message
                    x = sol.y[:, -1].copy()
                t = tb
            if tb == t_end:
                return x, seen
            if (tb, False) in obs:
                seen[tb, False] = x.copy()
            reset = tb in resets or any(j[0] == tb and j[3] for j in jumps)
            if reset:
                x = np.zeros(self.n)
                active = [i for i in active if i.dated >= tb]
            for jt, add, _, _ in jumps:
                if jt == tb:
                    x = x + add
            for i in active:
                if i.stop is None and i.start == tb:
                    x[i.cmt] += i.amount
            if (tb, True) in obs:
                seen[tb, True] = x.copy()
        return x, seen

    def steady_state(self, r: dict) -> tuple[np.ndarray, list[Input]]:
        """State at the SS record's time (before its own events) and the inputs still to come."""
        t_ss = r["time"]
        if r["amt"] == 0:  # constant infusion: its steady state, and no input after
            span = DECAY / self.slowest
            run = Input(t_ss - span, t_ss - span, t_ss, self.entry[r["route"]], r["rate"])
            x, _ = self.run(np.zeros(self.n), t_ss - span, [run], t_end=t_ss)
            return x, []
        one = self.inputs(0.0, r["amt"], r["route"], r["rate"], r["mode"])
        reach = one.start + (0.0 if one.stop is None else one.stop - one.start)
        n_back = math.ceil((DECAY / self.slowest + reach) / r["ii"])
        train = [self.inputs(t_ss - k * r["ii"], r["amt"], r["route"], r["rate"], r["mode"]) for k in range(n_back + 1)]  # fmt: skip
        t0 = t_ss - n_back * r["ii"]
        x, _ = self.run(np.zeros(self.n), t0, train, t_end=t_ss)
        pending = []
        for i in train:
            if i.stop is None and i.start >= t_ss:
                pending.append(replace(i, dated=t_ss))
            elif i.stop is not None and i.stop > t_ss:
                pending.append(replace(i, dated=t_ss, start=max(i.start, t_ss)))
        return x, pending

    def simulate(self, records: list[dict], obs: list[tuple[float, bool]]) -> dict:
        inputs, resets, jumps = [], [], []
        for r in records:
            if r["evid"] in (3, 4):
                resets.append(r["time"])
            if r["evid"] == 3:
                continue
            times = r["time"] + r["ii"] * np.arange(r["addl"] + 1)
            if r["ss"]:
                add, more = self.steady_state(r)
                jumps.append((r["time"], add, more, r["ss"] == 1))
                times = times[1:]
            inputs += [self.inputs(t, r["amt"], r["route"], r["rate"], r["mode"]) for t in times]
        t0 = min(r["time"] for r in records) - 1.0
        _, seen = self.run(np.zeros(self.n), t0, inputs, resets, jumps, obs)
        return seen


# --------------------------------------------------------------------------------------
# The engine's side: the same records through build_layout
# --------------------------------------------------------------------------------------


def engine_conc(records: list[dict], obs_t: np.ndarray, level: np.ndarray, after: np.ndarray):
    doses = [r for r in records if r["evid"] in (1, 4)]
    col = {k: np.array([r[k] for r in doses]) for k in doses[0]}
    row, times = expand_additional_doses(col["time"], col["ii"], col["addl"])
    first = np.r_[True, row[1:] != row[:-1]]  # ADDL doses after an SS record are plain doses
    resets = [r["time"] for r in records if r["evid"] in (3, 4)]
    layout = build_layout(
        dose_subject=np.zeros(row.size, int), dose_time_h=times, dose_amt_mg=col["amt"][row],
        dose_rate_mg_h=col["rate"][row], dose_route=col["route"][row],
        dose_rate_mode=col["mode"][row], dose_ss=np.where(first, col["ss"][row], 0),
        dose_ii_h=col["ii"][row], dose_timing_modelled=True, reset_subject=np.zeros(len(resets), int),
        reset_time_h=resets, obs_subject=np.zeros(obs_t.size, int), obs_time_h=obs_t,
        obs_level=level, obs_after_events=after, n_subject=1,
    )  # fmt: skip
    return np_conc_ng_ml(layout, cl=CL, vc=VC, q=Q, vp=VP, metabolites=METABOLITES, routes=ROUTES)


@pytest.fixture(scope="module")
def system():
    return System()


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_engine_matches_the_ode_simulation(system, name):
    subject = SUBJECTS[name]
    obs_t = np.array(subject["obs"])
    after = np.isin(obs_t, subject.get("after", []))
    seen = system.simulate(subject["records"], list(zip(obs_t, after, strict=True)))
    # every level at every time: parent, metabolite 1, metabolite 2
    t_all = np.repeat(obs_t, 3)
    level = np.tile(np.arange(3), obs_t.size)
    after_all = np.repeat(after, 3)
    want = np.array([1000.0 * seen[t, a][system.observed[lv]] / system.volumes[lv] for t, a, lv in zip(t_all, after_all, level, strict=True)])  # fmt: skip
    got = engine_conc(subject["records"], t_all, level, after_all)
    scale = np.array([np.abs(want[level == lv]).max() for lv in level])
    assert np.all(scale > 0)
    err = np.abs(got - want) / (np.abs(want) + 1e-3 * scale)
    worst = int(np.argmax(err))
    assert err[worst] < 1e-6, (
        f"t {t_all[worst]} level {level[worst]}: engine {got[worst]!r}, ODE {want[worst]!r}"
    )
    assert np.all((want == 0) == (got == 0))  # nothing before a dose acts, nothing after a reset


def test_the_ode_steady_state_is_periodic(system):
    """The reference's own check: the train's state one interval later repeats."""
    r = rec(100.0, 100.0, "late", rate=25.0, ss=1, ii=12.0)
    x, _ = system.steady_state(r)
    x_next, _ = system.steady_state({**r, "time": 112.0})
    np.testing.assert_allclose(x_next, x, rtol=1e-9, atol=1e-12)
