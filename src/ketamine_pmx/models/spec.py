"""Model specifications (``models/*.yaml``): loading, validation and the parameter table.

A spec is data: read with ``yaml.safe_load``, validated against the packaged JSON Schema
(``schemas/pk_model.schema.yaml``, defaults filled in), then checked for the structural rules a
schema cannot express (every parameter the structure needs is there, none it cannot use).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ketamine_pmx.config import ConfigError, load_schema, validate_with_schema

ENANTIOMERS = ("S", "R")
#: Observed analytes of each chain level, by stereo mode.
CHAIN_ANALYTES = {
    "enantiomers": {
        "S": ("S_KET", "S_NK", "S_HNK"),
        "R": ("R_KET", "R_NK", "R_HNK"),
    },
    "racemic": {"RAC": ("KET", "NK", "HNK")},
    "none": {"DRUG": ("DRUG",)},
}
DEFAULT_KIND = {
    "cl": "clearance", "cl_f": "clearance", "cl_o": "clearance", "q": "clearance", "q2": "clearance",
    "cl_nk": "clearance", "cl_hnk": "clearance", "vc": "volume", "vp": "volume", "vp2": "volume",
    "v_nk": "volume", "v_hnk": "volume", "ka": "rate", "f_bio": "fraction", "fm_hnk": "fraction",
}  # fmt: skip


def parameter_kind(name: str, par: dict[str, Any]) -> str:
    """What a parameter is: its ``kind``, else the default for its name, else a rate."""
    return par.get("kind", DEFAULT_KIND.get(name, "rate"))


class SpecError(ConfigError):
    """A model specification that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class PKSpec:
    """A validated population PK model specification."""

    name: str
    path: str
    spec: dict[str, Any]
    sha256: str

    @property
    def structure(self) -> dict[str, Any]:
        return self.spec["structure"]

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.spec["parameters"]

    @property
    def chains(self) -> tuple[str, ...]:
        """Chain labels: ("S", "R") for enantiomer models, ("RAC",) for racemic ones."""
        return tuple(CHAIN_ANALYTES[self.structure["stereo"]])

    @property
    def analytes(self) -> tuple[str, ...]:
        """Observed analytes, chain by chain, parent first."""
        n_level = 1 + len(self.structure["metabolites"])
        return tuple(
            a
            for chain in CHAIN_ANALYTES[self.structure["stereo"]].values()
            for a in chain[:n_level]
        )

    def level_of(self, analyte: str) -> tuple[str, int]:
        """(chain, level) of an observed analyte."""
        for chain, names in CHAIN_ANALYTES[self.structure["stereo"]].items():
            if analyte in names[: 1 + len(self.structure["metabolites"])]:
                return chain, names.index(analyte)
        raise KeyError(analyte)

    def typical(self, name: str, chain: str) -> float:
        value = self.parameters[name]["typical"]
        return float(value[chain]) if isinstance(value, dict) else float(value)

    def kind(self, name: str) -> str:
        return parameter_kind(name, self.parameters[name])

    def estimated(self) -> list[str]:
        return [n for n, p in self.parameters.items() if not p["fixed"]]


#: Built-in dose routes: an IV dose into the central compartment; the depot of
#: ``absorption: first_order`` (ka, f_bio).
BUILTIN_ROUTES = ("central", "depot")
#: Data route names that stand for a built-in route where the spec declares no route of that name.
ROUTE_ALIASES = {"iv": "central", "oral": "depot"}
#: Keys of a declared route that name a parameter, with the parameter kind each needs.
ROUTE_PARAMETER_KINDS = {
    "ka": "rate",
    "f": "fraction",
    "lag": "time",
    "rate": "rate",
    "duration": "time",
}


#: Route compartments that are a metabolite's (a dose of that metabolite), in chain order.
METABOLITE_COMPARTMENTS = ("NK", "HNK")


def route_level(structure: dict[str, Any], route: dict[str, Any]) -> int:
    """The chain level a declared route doses into: 0 the parent (central, depot), j the j-th
    metabolite of ``structure.metabolites`` in chain order (NK before HNK)."""
    compartment = route["compartment"]
    if compartment not in METABOLITE_COMPARTMENTS:
        return 0
    chain = [m for m in METABOLITE_COMPARTMENTS if m in structure.get("metabolites", [])]
    return chain.index(compartment) + 1


def route_parameters(route: dict[str, Any]) -> dict[str, str]:
    """The parameters a declared route names, by key (``transit.ktr`` as ``ktr``)."""
    out = {k: route[k] for k in ROUTE_PARAMETER_KINDS if k in route}
    if "transit" in route:
        out["ktr"] = route["transit"]["ktr"]
    return out


def required_parameters(structure: dict[str, Any]) -> set[str]:
    """Parameters a structure needs (those its declared routes name included)."""
    need = {"vc"}
    for route in structure.get("routes", {}).values():
        need |= set(route_parameters(route).values())
    metabolites = structure.get("metabolites", [])
    need |= {"cl_f", "cl_o"} if metabolites else {"cl"}
    if structure["parent_compartments"] >= 2:
        need |= {"q", "vp"}
    if structure["parent_compartments"] == 3:
        need |= {"q2", "vp2"}
    if structure.get("absorption", "none") == "first_order":
        need |= {"ka", "f_bio"}
    if "NK" in metabolites:
        need |= {"cl_nk", "v_nk"}
    if "HNK" in metabolites:
        need |= {"cl_hnk", "v_hnk", "fm_hnk"}
    return need


def default_route(structure: dict[str, Any]) -> str:
    """The route of a dose row with an empty ROUTE: ``structure.default_route``, else the
    depot with first-order absorption, else the central compartment."""
    if "default_route" in structure:
        return structure["default_route"]
    return "depot" if structure.get("absorption", "none") == "first_order" else "central"


def known_routes(structure: dict[str, Any]) -> tuple[str, ...]:
    """The routes a structure can give doses by: central, depot with first-order absorption,
    and the declared ones."""
    builtin = ("central", "depot") if structure.get("absorption") == "first_order" else ("central",)  # fmt: skip
    return (*builtin, *structure.get("routes", {}))


def resolve_route(structure: dict[str, Any], name: str) -> str | None:
    """The route a data ROUTE value means: empty is the default route, a known route itself,
    an alias (:data:`ROUTE_ALIASES`, where the structure declares no route of that name) its
    built-in route; None where the structure has no such route."""
    name = name.strip()
    if not name:
        return default_route(structure)
    known = known_routes(structure)
    if name in known:
        return name
    alias = ROUTE_ALIASES.get(name)
    return alias if alias in known else None


def _route_problems(structure: dict[str, Any], parameters: dict[str, dict[str, Any]]) -> list:
    """What is wrong with ``structure.routes`` and ``structure.default_route``: a depot route
    needs ka, a central one takes no ka or transit; each named parameter must exist and be of
    the kind its key needs; the default route must be known. A route into a metabolite's
    compartment (NK, HNK) needs that metabolite in the structure and may have a depot (ka)."""
    problems = []
    metabolites = structure.get("metabolites", [])
    for name, route in structure.get("routes", {}).items():
        where = f"structure.routes.{name}"
        if name in BUILTIN_ROUTES:
            problems.append(
                f"{where}: {name} is a built-in route (central: IV; depot: absorption "
                "first_order with ka and f_bio); give a declared route another name"
            )
        if route["compartment"] == "depot" and "ka" not in route:
            problems.append(f"{where}.ka: a depot route needs an absorption rate constant")
        if route["compartment"] == "central":
            for key in ("ka", "transit"):
                if key in route:
                    problems.append(f"{where}.{key}: a central route has no absorption")
        if route["compartment"] in METABOLITE_COMPARTMENTS:
            if route["compartment"] not in metabolites:
                problems.append(
                    f"{where}.compartment: {route['compartment']} is not a metabolite of the "
                    f"structure (structure.metabolites: {list(metabolites)})"
                )
            if "transit" in route and "ka" not in route:
                problems.append(f"{where}.transit: transit compartments need a depot (ka)")
        for key, par in route_parameters(route).items():
            at = f"{where}.transit.ktr" if key == "ktr" else f"{where}.{key}"
            if par not in parameters:
                problems.append(f"{at}: {par!r} is not a parameter of the model")
                continue
            want = ROUTE_PARAMETER_KINDS.get(key, "rate")
            kind = parameter_kind(par, parameters[par])
            if kind != want:
                problems.append(f"{at}: {par!r} is a {kind} parameter; {key} needs kind {want}")
    if "default_route" in structure and structure["default_route"] not in known_routes(structure):
        problems.append(
            f"structure.default_route: {structure['default_route']!r} is not a route of the "
            f"model (routes: {list(known_routes(structure))})"
        )
    return problems


def required_covariates(spec: PKSpec) -> dict[str, str]:
    """The data columns a spec uses, each with the spec key that uses it: ``WT`` with
    allometry (``covariates.allometry.enabled``, the default), ``CYP2B6`` with a CYP2B6 effect
    (``covariates.cyp2b6``). A spec without covariate effects needs none."""
    cov = spec.spec["covariates"]
    need = {}
    if cov.get("allometry", {}).get("enabled", True):
        need["WT"] = "covariates.allometry"
    if cov.get("cyp2b6"):
        need["CYP2B6"] = "covariates.cyp2b6"
    return need


def bsv_groups(parameters: dict[str, dict[str, Any]]) -> dict[str, str]:
    """BSV groups of a spec's (validated) ``parameters`` in spec order, each with its first
    parameter (the one whose individual value the centred parameterisation samples; the
    group's other parameters share its eta)."""
    groups: dict[str, str] = {}
    for name, par in parameters.items():
        if par["bsv"]:
            groups.setdefault(par.get("bsv_group") or name, name)
    return groups


def joint_effects(spec: PKSpec) -> bool:
    """Whether ``spec`` draws every BSV group's subject effects as one free variable (subject,
    chain, group) started at their empirical Bayes estimates: with information weights or
    whitening (``bsv.parameterisation: information`` or ``bsv.whitening: laplace``)."""
    bsv = spec.spec["bsv"]
    return bsv["parameterisation"] == "information" or bsv["whitening"] != "none"


def _sample_per_problems(parameters: dict[str, dict[str, Any]], groups: dict[str, str]) -> list:
    """What is wrong with the ``sample_per`` keys: the clearance must be estimated and lead its
    BSV group (its individual value is what the centred subjects sample); the fraction must be
    estimated, without BSV (one value per chain), and not itself sampled per something."""
    problems = []
    for name, par in parameters.items():
        per = par.get("sample_per")
        if per is None:
            continue
        where = f"parameters.{name}.sample_per"
        if parameter_kind(name, par) != "clearance" or par["fixed"]:
            problems.append(f"{where}: only an estimated clearance can be sampled per a fraction")
        leader = groups.get(par.get("bsv_group") or name)
        if par["bsv"] and leader != name:
            problems.append(
                f"{where}: {name} shares the subject effect of {leader!r}; only a group's first "
                "parameter can be sampled per a fraction"
            )
        other = parameters.get(per)
        if other is None:
            problems.append(f"{where}: {per!r} is not a parameter of the model")
        elif (
            parameter_kind(per, other) != "fraction"
            or other["fixed"]
            or other["bsv"]
            or "sample_per" in other
        ):
            problems.append(
                f"{where}: {per!r} must be an estimated fraction without between-subject "
                "variability (and not itself sampled per another parameter)"
            )
    return problems


def _sample_with_problems(parameters: dict[str, dict[str, Any]]) -> list:
    """What is wrong with the ``sample_with`` keys: two estimated clearances, each in one pair
    only, neither sampled per a fraction (their typical values are the pair's)."""
    problems = []
    paired: dict[str, str] = {}
    for name, par in parameters.items():
        other = par.get("sample_with")
        if other is None:
            continue
        where = f"parameters.{name}.sample_with"
        pair = [name, other]
        if other not in parameters:
            problems.append(f"{where}: {other!r} is not a parameter of the model")
            continue
        if other == name:
            problems.append(f"{where}: a clearance cannot be sampled with itself")
            continue
        for n in pair:
            p = parameters[n]
            if parameter_kind(n, p) != "clearance" or p["fixed"]:
                problems.append(f"{where}: {n!r} is not an estimated clearance")
            if "sample_per" in p:
                problems.append(
                    f"{where}: {n!r} is sampled per a fraction (sample_per); a pair's typical "
                    "values are its total and share"
                )
            if n in paired:
                problems.append(f"{where}: {n!r} is already sampled with {paired[n]!r}")
        paired.update({name: other, other: name})
    return problems


def validate_spec(raw: Any, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a model specification must be a mapping")
    spec = validate_with_schema(
        raw, load_schema("pk_model"), source, "model specification", error=SpecError
    )
    problems = []
    structure = spec["structure"]
    mets = structure["metabolites"]
    if structure["stereo"] == "none" and mets:
        problems.append("structure.metabolites: a generic drug (stereo: none) has no metabolites")
    elif mets not in ([], ["NK"], ["NK", "HNK"]):
        problems.append(
            f"structure.metabolites: must be [], [NK] or [NK, HNK] (formed in sequence), got {mets}"
        )
    problems += _route_problems(structure, spec["parameters"])
    need = required_parameters(structure)
    have = set(spec["parameters"])
    named_by_routes = {
        par for r in structure.get("routes", {}).values() for par in route_parameters(r).values()
    }
    for name in sorted(need - have - named_by_routes):  # those reported by _route_problems
        problems.append(f"parameters.{name}: required by the structure but missing")
    for name in sorted(have - need):
        problems.append(f"parameters.{name}: not used by the structure")
    stereo = structure["stereo"]
    for name, par in spec["parameters"].items():
        typical = par["typical"]
        if stereo != "enantiomers" and isinstance(typical, dict):
            problems.append(f"parameters.{name}.typical: a {stereo} model takes one number")
        kind = parameter_kind(name, par)
        values = typical.values() if isinstance(typical, dict) else [typical]
        top_ok = (lambda v: v <= 1) if par["fixed"] else (lambda v: v < 1)
        if kind == "fraction" and any(not (0 < v and top_ok(v)) for v in values):
            problems.append(
                f"parameters.{name}.typical: an estimated fraction must lie in (0, 1), "
                "a fixed one in (0, 1]"
            )
        if par.get("bsv_group") and not par.get("bsv"):
            problems.append(f"parameters.{name}: bsv_group given but bsv is false")
        if par["fixed"] and par["bsv"]:
            problems.append(
                f"parameters.{name}: a fixed parameter cannot have between-subject variability"
            )
    bsv = spec.get("bsv", {})
    groups = bsv_groups(spec["parameters"])
    problems += _sample_per_problems(spec["parameters"], groups)
    problems += _sample_with_problems(spec["parameters"])
    if bsv.get("centred_scale") == "apparent":
        pars = spec["parameters"]
        if "NK" not in mets:
            problems.append("bsv.centred_scale: apparent clearances need the metabolite NK")
        elif not (
            {"cl_f", "cl_o"} <= set(pars)
            and pars["cl_f"]["bsv"]
            and pars["cl_o"]["bsv"]
            and pars["cl_f"].get("bsv_group")
            and pars["cl_o"].get("bsv_group") == pars["cl_f"]["bsv_group"]
            and groups[pars["cl_f"]["bsv_group"]] == "cl_f"
        ):
            problems.append(
                "bsv.centred_scale: apparent clearances need cl_f and cl_o in one BSV group "
                "(bsv_group), cl_f first"
            )
    for g in bsv.get("centring_weights", {}):
        where = f"bsv.centring_weights.{g}"
        if g not in groups:
            problems.append(f"{where}: not a BSV group of this model (groups: {sorted(groups)})")
        if g in bsv.get("noncentred_groups", []):
            problems.append(f"{where}: the group is also in bsv.noncentred_groups")
    for g in bsv.get("noncentred_groups", []):
        if g not in groups:
            problems.append(
                f"bsv.noncentred_groups: {g!r} is not a BSV group of this model "
                f"(groups: {sorted(groups)})"
            )
    if (
        bsv.get("correlation") == "lkj"
        and bsv.get("parameterisation", "noncentred") != "noncentred"
    ):
        problems.append(
            "bsv.parameterisation: an LKJ-correlated block is sampled non-centred; "
            f"{bsv['parameterisation']!r} is not available with correlation lkj"
        )
    if bsv.get("whitening", "none") != "none" and bsv.get("correlation", "none") != "none":
        problems.append(
            f"bsv.whitening: {bsv['whitening']!r} whitens uncorrelated subject effects; it is not "
            f"available with correlation {bsv['correlation']!r}"
        )
    if bsv.get("parameterisation") == "information":
        if bsv.get("correlation", "none") != "none":
            problems.append(
                "bsv.parameterisation: 'information' weights uncorrelated subject effects; it is "
                f"not available with correlation {bsv['correlation']!r}"
            )
        for key in ("noncentred_groups", "centring_weights"):
            if bsv.get(key):
                problems.append(
                    f"bsv.{key}: not used with parameterisation 'information', which sets every "
                    "effect's centring weight from its information"
                )
    if bsv.get("correlation") == "enantiomer" and stereo != "enantiomers":
        problems.append(
            f"bsv.correlation: 'enantiomer' correlates S and R effects; a {stereo} model has one chain"
        )
    cyp = spec["covariates"].get("cyp2b6")
    if cyp and cyp.get("parameter") not in spec["parameters"]:
        problems.append(
            f"covariates.cyp2b6.parameter: {cyp.get('parameter')!r} is not a parameter of the model"
        )
    if problems:
        raise SpecError(f"{source}: invalid model specification:\n  - " + "\n  - ".join(problems))
    return spec


def load_pk_spec(path: str | Path) -> PKSpec:
    """Read and validate a PK model specification."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: model specification not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    spec = validate_spec(raw, str(path))
    if spec["card"]["name"] != path.stem:
        raise SpecError(
            f"{path}: card.name {spec['card']['name']!r} must equal the file name {path.stem!r}"
        )
    return PKSpec(name=path.stem, path=str(path), spec=spec, sha256=_digest(spec))


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def with_bsv(spec: PKSpec, **bsv: Any) -> PKSpec:
    """The same specification with other subject-effect settings (``bsv`` keys, validated
    again, e.g. ``parameterisation="noncentred"``); its digest is that of the new settings."""
    raw = copy.deepcopy(spec.spec)
    raw["bsv"].update(bsv)
    return _respecified(spec, raw)


def without_bsv(spec: PKSpec, groups: list[str] | tuple[str, ...]) -> PKSpec:
    """The same specification without the between-subject variability of BSV ``groups`` (every
    parameter of each group gets ``bsv: false``): the reduced model that
    :func:`ketamine_pmx.checks.bsv_advice` proposes when a group's omega is piled at 0."""
    have = bsv_groups(spec.parameters)
    unknown = [g for g in groups if g not in have]
    if unknown:
        raise SpecError(
            f"{spec.path}: {unknown} not BSV group(s) of the model (groups: {sorted(have)})"
        )
    raw = copy.deepcopy(spec.spec)
    for name, par in raw["parameters"].items():
        if par["bsv"] and (par.get("bsv_group") or name) in groups:
            par["bsv"] = False
            par.pop("bsv_group", None)
    return _respecified(spec, raw)


def with_parameter(spec: PKSpec, name: str, **keys: Any) -> PKSpec:
    """The same specification with other keys of parameter ``name`` (validated again; a key
    given as None is removed), e.g. ``with_parameter(spec, "cl_hnk", sample_per="fm_hnk")``."""
    raw = copy.deepcopy(spec.spec)
    if name not in raw["parameters"]:
        raise SpecError(f"{spec.path}: parameters.{name}: not a parameter of the model")
    par = raw["parameters"][name]
    for key, value in keys.items():
        if value is None:
            par.pop(key, None)
        else:
            par[key] = value
    return _respecified(spec, raw)


def _respecified(spec: PKSpec, raw: dict[str, Any]) -> PKSpec:
    """``spec`` with the content ``raw`` (validated again), its digest that of the new content."""
    new = validate_spec(raw, spec.path)
    return PKSpec(name=spec.name, path=spec.path, spec=new, sha256=_digest(new))


class ResponseSpecError(ConfigError):
    """A response model specification that cannot be used."""


@dataclass(frozen=True)
class ResponseSpec:
    name: str
    path: str
    spec: dict[str, Any]
    sha256: str

    @property
    def exposure(self) -> dict[str, Any] | None:
        return self.spec["exposure"]

    @property
    def predictors(self) -> list[dict[str, Any]]:
        return self.spec["predictors"]

    @property
    def outcomes(self) -> list[str]:
        return list(self.spec["outcomes"])

    def terms(self) -> list[dict[str, Any]]:
        """Every effect of the model: exposure first, then the biomarkers (name, pooling, ...)."""
        out = []
        if self.exposure:
            out.append({"name": "exposure", "column": self.exposure["metric"], **self.exposure})
        for p in self.predictors:
            out.append({"name": p["column"].lower(), **p})
        return out


def load_response_spec(path: str | Path) -> ResponseSpec:
    """Read and validate a response model specification."""
    path = Path(path)
    if not path.is_file():
        raise ResponseSpecError(f"{path}: model specification not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ResponseSpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ResponseSpecError(f"{path}: a model specification must be a mapping")
    spec = validate_with_schema(
        raw, load_schema("response_model"), str(path), "model specification", ResponseSpecError
    )
    problems = []
    if spec["card"]["name"] != path.stem:
        problems.append(
            f"card.name {spec['card']['name']!r} must equal the file name {path.stem!r}"
        )
    cols = [p["column"] for p in spec["predictors"]]
    for c in sorted({c for c in cols if cols.count(c) > 1}):
        problems.append(f"predictors: column {c} listed twice")
    if not spec["exposure"] and not spec["predictors"] and not spec["cyp2b6"]:
        problems.append("the model has no predictor (give exposure, predictors or cyp2b6)")
    if problems:
        raise ResponseSpecError(
            f"{path}: invalid model specification:\n  - " + "\n  - ".join(problems)
        )
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return ResponseSpec(name=path.stem, path=str(path), spec=spec, sha256=digest)
