"""ketamine_pmx.pk: NONMEM's dose records (ADDL, SS=1/2, resets, lag, F, modelled rate and
duration, depot infusions, transit chains) against the same doses written out, numpy against
PyTensor, and the refusal of invalid records."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from ketamine_pmx.pk import (
    Metabolite,
    Route,
    build_layout,
    expand_additional_doses,
    np_conc_ng_ml,
    pt_conc_ng_ml,
)

TAU = 12.0
N_WRITTEN = 200
PARAMS = {
    "cl": 5.0,
    "vc": 50.0,
    "q": 20.0,
    "vp": 80.0,
    "metabolites": [Metabolite(3.0, 30.0, cl_f=2.0)],
}
ROUTES = {
    "depot": Route(ka=1.2, f=0.7, lag=1.5),
    "central": Route(f=0.8, lag=0.7, rate=6.0, duration=3.0),
    "transit": Route(ka=1.2, n_transit=3, ktr=1.2, lag=0.3),  # ktr == ka: coincident nodes
}
OBS_T = 2400.0 + np.linspace(-2.0, 40.0, 43)


def one_dose(route, rate, mode, ss, time=2400.0, **extra):
    return dict(
        dose_subject=[0], dose_time_h=[time], dose_amt_mg=[100.0], dose_rate_mg_h=[rate],
        dose_route=[route], dose_rate_mode=[mode], dose_ss=[ss], dose_ii_h=[TAU],
        dose_timing_modelled=True, obs_subject=np.zeros(OBS_T.size, int), obs_time_h=OBS_T,
        obs_level=np.arange(OBS_T.size) % 2, **extra,
    )  # fmt: skip


def written_out(args, n=N_WRITTEN):
    out = dict(args)
    t0 = args["dose_time_h"][0]
    out["dose_time_h"] = t0 - TAU * np.arange(n + 1)[::-1]
    for k in ("dose_amt_mg", "dose_rate_mg_h", "dose_route", "dose_rate_mode"):
        out[k] = np.repeat(args[k], n + 1)
    out["dose_subject"] = np.zeros(n + 1, int)
    out["dose_ss"] = 0
    out["dose_ii_h"] = 0.0
    return out


CASES = [  # route, data rate, rate mode
    ("central", 0.0, 0),  # bolus with lag and F
    ("central", 10.0, 0),  # infusion shorter than II (F scales the duration)
    ("central", 5.0, 0),  # infusion longer than II (16 h)
    ("central", 0.0, 1),  # modelled rate
    ("central", 0.0, 2),  # modelled duration
    ("depot", 0.0, 0),  # oral with lag, F
    ("depot", 3.0, 0),  # infusion into the depot, longer than II
    ("transit", 0.0, 0),  # transit chain, ktr == ka
    ("transit", 40.0, 0),  # infusion into a transit chain
]


@pytest.mark.parametrize(("route", "rate", "mode"), CASES)
def test_steady_state_equals_the_dose_train_written_out(route, rate, mode):
    args = one_dose(route, rate, mode, ss=1)
    got = np_conc_ng_ml(build_layout(**args), routes=ROUTES, **PARAMS)
    want = np_conc_ng_ml(build_layout(**written_out(args)), routes=ROUTES, **PARAMS)
    after = OBS_T > 2400.0
    assert np.all(got[after] > 0)
    np.testing.assert_allclose(got[after], want[after], rtol=1e-9)


def test_ss2_adds_and_ss1_resets():
    first = one_dose("depot", 0.0, 0, ss=0, time=2390.0)
    layout_args = dict(first)
    for k in ("dose_subject", "dose_time_h", "dose_amt_mg", "dose_rate_mg_h", "dose_route",
              "dose_rate_mode", "dose_ss", "dose_ii_h"):  # fmt: skip
        layout_args[k] = np.concatenate([first[k], one_dose("central", 0.0, 0, ss=1)[k]])
    base = np_conc_ng_ml(build_layout(**first), routes=ROUTES, **PARAMS)
    ss_only = np_conc_ng_ml(build_layout(**one_dose("central", 0.0, 0, ss=1)), routes=ROUTES, **PARAMS)  # fmt: skip
    after = OBS_T > 2400.0
    ss1 = np_conc_ng_ml(build_layout(**layout_args), routes=ROUTES, **PARAMS)
    np.testing.assert_allclose(ss1[after], ss_only[after], rtol=1e-13)
    layout_args["dose_ss"] = np.array([0, 2])
    ss2 = np_conc_ng_ml(build_layout(**layout_args), routes=ROUTES, **PARAMS)
    np.testing.assert_allclose(ss2[after], (ss_only + base)[after], rtol=1e-13)


def test_resets_cut_earlier_doses():
    args = one_dose("central", 10.0, 0, ss=0, time=2390.0)
    free = np_conc_ng_ml(build_layout(**args), routes=ROUTES, **PARAMS)
    reset = np_conc_ng_ml(
        build_layout(**args, reset_subject=[0], reset_time_h=[2410.0]), routes=ROUTES, **PARAMS
    )
    np.testing.assert_array_equal(reset[OBS_T <= 2410.0], free[OBS_T <= 2410.0])
    assert np.all(reset[OBS_T > 2410.0] == 0.0)


def test_additional_doses_expand_in_row_order():
    row, time = expand_additional_doses([0.0, 5.0], [24.0, 0.0], [2, 0])
    np.testing.assert_array_equal(row, [0, 0, 0, 1])
    np.testing.assert_allclose(time, [0.0, 24.0, 48.0, 5.0])
    with pytest.raises(ValueError, match="ii_h"):
        expand_additional_doses([0.0], [0.0], [2])
    with pytest.raises(ValueError, match="addl"):
        expand_additional_doses([0.0], [12.0], [1.5])


@pytest.mark.slow  # compiles four fused kernels (minutes on a fresh machine)
@pytest.mark.parametrize(("route", "rate", "mode"), [CASES[2], CASES[4], CASES[6], CASES[7]])
def test_pytensor_equals_numpy_with_finite_gradients(route, rate, mode):
    args = one_dose(route, rate, mode, ss=1)
    layout = build_layout(**args)
    want = np_conc_ng_ml(layout, routes=ROUTES, **PARAMS)
    lag, f, cl = pt.dscalar("lag"), pt.dscalar("f"), pt.dscalar("cl")
    base = ROUTES[route]
    routes = {route: Route(ka=base.ka, f=f, lag=lag, rate=base.rate, duration=base.duration,
                           n_transit=base.n_transit, ktr=base.ktr)}  # fmt: skip
    conc = pt_conc_ng_ml(layout, routes=routes, **{**PARAMS, "cl": cl})
    fn = pytensor.function([lag, f, cl], [conc, *pytensor.grad(conc.sum(), [lag, f, cl])])
    got, *grads = fn(base.lag, base.f, PARAMS["cl"])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert all(np.isfinite(g) for g in grads)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dose_ss": [1], "dose_ii_h": [0.0]}, "dose_ii_h"),
        ({"dose_ss": [3], "dose_ii_h": [12.0]}, "dose_ss"),
        ({"dose_rate_mode": [1], "dose_rate_mg_h": [5.0]}, "dose_rate_mode"),
        ({"reset_subject": [4], "reset_time_h": [1.0]}, "reset_subject"),
    ],
)
def test_layout_rejects_invalid_records(overrides, message):
    args = dict(dose_subject=[0], dose_time_h=[0.0], dose_amt_mg=[1.0], obs_subject=[0])
    args.update(obs_time_h=[1.0], n_subject=1)
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        build_layout(**args)


def test_concentrations_reject_invalid_routes():
    layout = build_layout(dose_subject=[0], dose_time_h=[0.0], dose_amt_mg=[1.0],
                          dose_route=["oral"], obs_subject=[0], obs_time_h=[1.0])  # fmt: skip
    with pytest.raises(ValueError, match="dose_route: route 'oral'"):
        np_conc_ng_ml(layout, cl=1.0, vc=10.0)
    with pytest.raises(ValueError, match=r"routes\['oral'\].lag"):
        np_conc_ng_ml(layout, cl=1.0, vc=10.0, routes={"oral": Route(ka=1.0, lag=-1.0)})
    with pytest.raises(ValueError, match="ktr"):
        Route(ka=1.0, n_transit=2)


def test_subjects_of_one_layout_are_independent():
    """Per-subject route parameters, resets and steady states stay with their subject: three
    subjects in one layout give what each gives alone."""
    cases = [("central", 5.0, 0, 1), ("depot", 3.0, 0, 2), ("transit", 0.0, 0, 1)]
    f = np.array([0.8, 0.6, 1.0])
    lag = np.array([0.7, 14.0, 0.3])  # subject 1: lag above II
    alone, joined = [], {}
    for s, (route, rate, mode, ss) in enumerate(cases):
        args = one_dose(route, rate, mode, ss, time=2400.0 - 5.0 * s)
        resets = [2420.0] if s == 1 else []
        args.update(reset_subject=np.zeros(len(resets), int), reset_time_h=resets)
        base = ROUTES[route]
        routes = {route: Route(ka=base.ka, f=f[s], lag=lag[s], rate=base.rate,
                               duration=base.duration, n_transit=base.n_transit, ktr=base.ktr)}  # fmt: skip
        alone.append(np_conc_ng_ml(build_layout(**args), routes=routes, **PARAMS))
        for k, v in args.items():
            if k.endswith("subject"):
                v = np.full(len(np.atleast_1d(v)), s)
            if k in ("dose_timing_modelled",):
                joined[k] = v
                continue
            joined.setdefault(k, []).append(np.atleast_1d(v))
    layout_args = {k: v if k == "dose_timing_modelled" else np.concatenate(v) for k, v in joined.items()}  # fmt: skip
    routes = {
        name: Route(ka=r.ka, f=f, lag=lag, rate=r.rate, duration=r.duration,
                    n_transit=r.n_transit, ktr=r.ktr)
        for name, r in ROUTES.items()
    }  # fmt: skip
    got = np_conc_ng_ml(build_layout(**layout_args, n_subject=3), routes=routes, **PARAMS)
    np.testing.assert_allclose(got, np.concatenate(alone), rtol=1e-13, atol=0)
    assert np.all(alone[1][OBS_T > 2420.0] == 0.0)
