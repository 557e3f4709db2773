"""Policy profiles: every threshold, count, window and cap the rules use (CONTRACT §1 ``--policy``).

A policy is a mapping (read from YAML by ``services/recommender/policies``) with ``id``,
``version``, optional ``extends`` (a built-in name) and the
sections ``general``, ``agents``, ``steroid`` and ``pathways: {<pathway>: {covered, <param>...}}``.
The built-in ``cms-lcd`` defines every known key; a custom file may only set keys that exist
there, with a value of the same type (a number where a number is expected, ``null`` to switch a
limit off where the built-in allows it). Anything else raises :class:`PolicyError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

BUILTIN = ("cms-lcd", "consensus-2020")
PATHWAYS = (
    "facet-diagnostic",
    "facet-rfa",
    "facet-rfa-repeat",
    "facet-therapeutic",
    "sij-diagnostic",
    "sij-therapeutic",
    "sij-rfa",
    "esi",
    "genicular-rfa",
    "knee-steroid",
)
# keys that may be switched off with null even when the base sets a number
NULLABLE = frozenset(
    {
        "session_cap",
        "conservative_care_months",
        "conservative_care_days",
        "repeat_diagnostics_after_years",
        "pain_months",
        "pain_days",
        "max_joints_per_side",
        "min_interval_days",
        "max_injections",
    }
)
_SECTIONS = ("general", "agents", "steroid", "instruments", "sources", "pathways")


class PolicyError(ValueError):
    """An invalid policy file; the message names the key and the reason."""


@dataclass(frozen=True, slots=True)
class Agent:
    minimum_minutes: float
    prolonged_minutes: float


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy's identity as written into suggestions and audit rows."""

    id: str
    version: str

    @property
    def uri(self) -> str:
        return f"urn:pinpoint:policy:{self.id}|{self.version}"


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    version: str
    general: Mapping[str, float]
    agents: Mapping[str, Agent]
    steroid_factors: Mapping[str, float]
    steroid: Mapping[str, float]
    pathways: Mapping[str, Mapping[str, Any]]
    instruments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def source_title(self, source_id: str) -> str:
        """How a source is named to a person ("LCD L38773"); its id when the policy lists none."""
        entry = self.sources.get(source_id)
        return str(entry.get("short") or entry.get("title") or source_id) if entry else source_id

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.id, self.version)

    def covered(self, pathway: str) -> bool:
        return bool(self.pathways.get(pathway, {}).get("covered", False))

    def num(self, pathway: str, key: str) -> float:
        value = self.pathways[pathway][key]
        if value is None:
            raise KeyError(f"{pathway}.{key} is null")
        return float(value)

    def opt(self, pathway: str, key: str) -> float | None:
        value = self.pathways.get(pathway, {}).get(key)
        return None if value is None else float(value)

    def flag(self, pathway: str, key: str) -> bool:
        return bool(self.pathways.get(pathway, {}).get(key, False))

    def g(self, key: str) -> float:
        return float(self.general[key])

    def agent(self, agent: str, anaesthetics: tuple[str, ...] = ()) -> Agent:
        """``mixed`` uses the longest-acting agent; ``unknown`` uses lidocaine's (CONTRACT §6)."""
        if agent in self.agents:
            return self.agents[agent]
        if agent == "mixed" and anaesthetics:
            known = [self.agents[a] for a in anaesthetics if a in self.agents]
            if known:
                return max(known, key=lambda a: a.minimum_minutes)
        return self.agents["lidocaine"]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any], path: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in base:
            raise PolicyError(f"{where}: unknown key")
        current = base[key]
        if isinstance(current, Mapping):
            if not isinstance(value, Mapping):
                raise PolicyError(f"{where}: must be a mapping")
            out[key] = _merge(current, value, where)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise PolicyError(f"{where}: must be true or false")
            out[key] = value
        elif value is None:
            if current is not None and key not in NULLABLE:
                raise PolicyError(f"{where}: may not be null")
            out[key] = None
        elif _is_number(current) or current is None or isinstance(current, str):
            if isinstance(current, str) and isinstance(value, str):
                out[key] = value
                continue
            if not _is_number(value) and not (isinstance(value, str) and path.endswith("factors")):
                raise PolicyError(f"{where}: must be a number (got {value!r})")
            if _is_number(value) and value < 0:
                raise PolicyError(f"{where}: must not be negative (got {value!r})")
            out[key] = value
        else:
            out[key] = value
    return out


def _fraction(value: Any, where: str) -> float:
    try:
        return float(Fraction(str(value)))
    except (ValueError, ZeroDivisionError) as exc:
        raise PolicyError(f"{where}: must be a number or a fraction like 16/3 (got {value!r})") from exc


def _build(data: Mapping[str, Any], source: str) -> Policy:
    for key in ("id", "version"):
        if (
            not isinstance(data.get(key), str | int | float)
            or isinstance(data.get(key), bool)
            or data.get(key) == ""
        ):
            raise PolicyError(f"{source}: {key}: required (a string)")
    agents: dict[str, Agent] = {}
    for name, spec in (data.get("agents") or {}).items():
        if not isinstance(spec, Mapping):
            raise PolicyError(f"{source}: agents.{name}: must be a mapping")
        try:
            agents[str(name)] = Agent(float(spec["minimum_minutes"]), float(spec["prolonged_minutes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(
                f"{source}: agents.{name}: needs numeric minimum_minutes and prolonged_minutes"
            ) from exc
    if "lidocaine" not in agents:
        raise PolicyError(f"{source}: agents.lidocaine: required")
    steroid = dict(data.get("steroid") or {})
    factors = {
        str(k): _fraction(v, f"{source}: steroid.factors.{k}")
        for k, v in (steroid.pop("factors", {}) or {}).items()
    }
    pathways = data.get("pathways") or {}
    for name in pathways:
        if name not in PATHWAYS:
            raise PolicyError(f"{source}: pathways.{name}: unknown pathway (known: {', '.join(PATHWAYS)})")
    instruments = data.get("instruments") or {}
    for name, spec in instruments.items():
        if not isinstance(spec, Mapping):
            raise PolicyError(f"{source}: instruments.{name}: must be a mapping")
        for key in ("direction", "low", "high", "mcid"):
            if key not in spec:
                raise PolicyError(f"{source}: instruments.{name}.{key}: required")
        if spec["direction"] not in ("higher-worse", "higher-better"):
            raise PolicyError(
                f"{source}: instruments.{name}.direction: must be higher-worse or higher-better"
            )
    sources = data.get("sources") or {}
    if not isinstance(sources, Mapping):
        raise PolicyError(f"{source}: sources: must be a mapping of source id to its description")
    return Policy(
        id=str(data["id"]),
        version=str(data["version"]),
        general={k: float(v) for k, v in (data.get("general") or {}).items()},
        agents=agents,
        steroid_factors=factors,
        steroid={k: float(v) for k, v in steroid.items()},
        pathways={k: dict(v) for k, v in pathways.items()},
        instruments={str(k): dict(v) for k, v in instruments.items()},
        sources={str(k): dict(v) for k, v in sources.items()},
    )


def _resolve(
    data: Mapping[str, Any], source: str, bases: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...] = ()
) -> dict[str, Any]:
    parent = data.get("extends")
    if parent is None:
        return dict(data)
    if parent not in BUILTIN:
        raise PolicyError(
            f"{source}: extends: must name a built-in policy ({', '.join(BUILTIN)}), got {parent!r}"
        )
    if parent in seen:
        raise PolicyError(f"{source}: extends: cycle through {parent}")
    base = _resolve(bases[parent], parent, bases, (*seen, parent))
    for key in data:
        if key not in (*_SECTIONS, "id", "version", "extends", "description"):
            raise PolicyError(f"{source}: {key}: unknown key")
    merged = dict(base)
    for section in _SECTIONS:
        if section in data:
            if not isinstance(data[section], Mapping):
                raise PolicyError(f"{source}: {section}: must be a mapping")
            if section == "pathways":
                for name in data[section]:
                    if name not in PATHWAYS:
                        raise PolicyError(f"{source}: pathways.{name}: unknown pathway")
            merged[section] = _merge(base.get(section) or {}, data[section], section)
    merged["id"], merged["version"] = data.get("id"), data.get("version")
    merged.pop("extends", None)
    return merged


def build_policy(data: Mapping[str, Any], source: str, bases: Mapping[str, Mapping[str, Any]]) -> Policy:
    """The :class:`Policy` of parsed policy ``data`` (named ``source`` in messages). ``bases`` holds
    the parsed built-in profiles by name; ``extends`` resolves against them. Pure: reading the
    files is the loader's job (``services/recommender/policies``)."""
    return _build(_resolve(data, source, bases), source)
