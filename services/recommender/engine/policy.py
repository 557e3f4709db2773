"""Policy profiles: every threshold, count, window and cap the rules use (CONTRACT §1 ``--policy``).

A policy is a mapping (read from YAML by ``services/recommender/policies``) with ``id``,
``version``, optional ``extends`` (a built-in name) and the
sections ``general``, ``agents``, ``steroid`` and ``pathways: {<pathway>: {covered, <param>...}}``.
The built-in ``cms-lcd`` defines every known key; a custom file may only set keys that exist
there, with a value of the same type (a number where a number is expected, ``null`` to switch a
limit off where the built-in allows it). Anything else raises :class:`PolicyError` naming the key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from services.recommender.engine.model import PATHWAYS
from services.recommender.engine.wording import REASONS

BUILTIN = ("cms-lcd", "consensus-2020")
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
_SECTIONS = ("general", "agents", "steroid", "instruments", "pathways")
_TOP_KEYS = ("id", "version", "extends", "description", "sources", "rules", *_SECTIONS)
#: keys that hold a percentage (0-100)
PERCENT_KEYS = frozenset({"threshold", "repeat_threshold", "function_threshold", "outcome_relief_threshold"})
_SOURCE_FIELDS = ("title", "publisher", "url", "date")


class PolicyError(ValueError):
    """An invalid policy file; the message names the key and the reason."""


def did_you_mean(word: str, known: Any) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``known``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True, slots=True)
class Source:
    """A public source a policy value follows (``sources`` of a policy file)."""

    id: str
    label: str  # short form shown in text: "LCD L38773"
    title: str
    publisher: str
    url: str
    date: str

    def as_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "label": self.label,
            "title": self.title,
            "publisher": self.publisher,
            "url": self.url,
            "date": self.date,
        }


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
    sources: Mapping[str, Source] = field(default_factory=dict)
    #: dotted key (``pathways.facet-rfa.threshold``, ``agents.lidocaine``, ``rules.<reason>``) →
    #: source id; a key cites the source of its nearest cited ancestor
    cites: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def source_title(self, source_id: str) -> str:
        """How a source is named to a person ("LCD L38773"); its id when the policy lists none."""
        found = self.sources.get(source_id)
        return found.label if found else source_id

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.id, self.version)

    def source_id(self, key: str) -> str | None:
        """The id of the source ``key`` (dotted) follows, or None."""
        parts = key.split(".")
        while parts:
            found = self.cites.get(".".join(parts))
            if found is not None:
                return found
            parts.pop()
        return None

    def source(self, key: str) -> Source | None:
        sid = self.source_id(key)
        return self.sources.get(sid) if sid else None

    def value(self, key: str) -> Any:
        """The resolved value of a dotted key (``pathways.facet-rfa.threshold``), or None."""
        section, _, rest = key.partition(".")
        if section == "pathways":
            pathway, _, name = rest.partition(".")
            return self.pathways.get(pathway, {}).get(name)
        if section == "general":
            return self.general.get(rest)
        if section == "steroid":
            if rest.startswith("factors."):
                return self.steroid_factors.get(rest.removeprefix("factors."))
            return self.steroid.get(rest)
        if section == "agents":
            name, _, attr = rest.partition(".")
            agent = self.agents.get(name)
            return getattr(agent, attr, None) if agent and attr else None
        return None

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


def _merge(
    base: Mapping[str, Any], override: Mapping[str, Any], path: str, source: str = ""
) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        where = (f"{source}: " if source else "") + (f"{path}.{key}" if path else str(key))
        if key not in base:
            raise PolicyError(f"{where}: unknown key{did_you_mean(key, base)}")
        current = base[key]
        if isinstance(current, Mapping):
            if not isinstance(value, Mapping):
                raise PolicyError(f"{where}: must be a mapping")
            out[key] = _merge(current, value, f"{path}.{key}" if path else str(key), source)
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


def _split_cites(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` without its ``cite`` mappings and ``rules``, and the citations they hold as dotted
    key → source id."""
    cites: dict[str, str] = {}

    def walk(node: Mapping[str, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "cite":
                if not isinstance(value, Mapping):
                    raise PolicyError(f"{source}: {path}.cite: must be a mapping of key: source id")
                for name, sid in value.items():
                    if not isinstance(sid, str) or not sid:
                        raise PolicyError(f"{source}: {path}.cite.{name}: must be a source id")
                    cites[f"{path}.{name}"] = sid
            elif isinstance(value, Mapping):
                out[key] = walk(value, f"{path}.{key}")
            else:
                if key == "source" and isinstance(value, str) and path.count(".") >= 1:
                    cites.setdefault(
                        path, value
                    )  # an entry naming its own source (instruments, documentation)
                out[key] = value
        return out

    out = dict(data)
    for section in _SECTIONS:
        if isinstance(data.get(section), Mapping):
            out[section] = walk(data[section], section)
    rules = out.pop("rules", None) or {}
    if not isinstance(rules, Mapping):
        raise PolicyError(f"{source}: rules: must be a mapping of reason code: source id")
    for code, sid in rules.items():
        if not isinstance(sid, str) or not sid:
            raise PolicyError(f"{source}: rules.{code}: must be a source id")
        cites[f"rules.{code}"] = sid
    return out, cites


def _leaves(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every value of the sections as dotted key → value."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        else:
            out[path] = node

    for section in _SECTIONS:
        if isinstance(data.get(section), Mapping):
            walk(data[section], section)
    return out


def _sources(data: Mapping[str, Any], source: str) -> dict[str, Source]:
    """``sources``: a mapping ``id: {short, title, publisher, url, date}`` (or a list of such
    mappings with an ``id``); ``short`` (or ``label``) is how texts name it, default the title."""
    items = data.get("sources") or {}
    if isinstance(items, Mapping):
        entries = [(str(k), v, f"sources.{k}") for k, v in items.items()]
    elif isinstance(items, list):
        entries = [
            (str(v.get("id")) if isinstance(v, Mapping) else "", v, f"sources[{n}]")
            for n, v in enumerate(items)
        ]
    else:
        raise PolicyError(
            f"{source}: sources: must be a mapping of source id to {{short, title, publisher, url, date}}"
        )
    known = ("id", "short", "label", *_SOURCE_FIELDS)
    out: dict[str, Source] = {}
    for sid, item, where in entries:
        if not isinstance(item, Mapping):
            raise PolicyError(f"{source}: {where}: must be a mapping with {', '.join(_SOURCE_FIELDS)}")
        for name in item:
            if name not in known:
                raise PolicyError(f"{source}: {where}.{name}: unknown field{did_you_mean(name, known)}")
        missing = [f for f in ("title", "publisher", "date") if item.get(f) in (None, "")]
        if not sid or sid == "None":
            missing.insert(0, "id")
        if "url" not in item:
            missing.append("url")
        if missing:
            raise PolicyError(f"{source}: {where}: {', '.join(missing)} required")
        out[sid] = Source(
            sid,
            str(item.get("short") or item.get("label") or item["title"]),
            str(item["title"]),
            str(item["publisher"]),
            str(item["url"] or ""),
            str(item["date"]),
        )
    return out


def _check_citations(
    leaves: Mapping[str, Any], cites: Mapping[str, str], sources: Mapping[str, Source], source: str
) -> None:
    """Every cite names a known key and a known source; every set value has a source."""
    containers = {k.rsplit(".", i)[0] for k in leaves for i in range(1, k.count(".") + 1)}
    for key, sid in cites.items():
        if key.startswith("rules."):
            code = key.removeprefix("rules.")
            if code not in REASONS:
                raise PolicyError(f"{source}: {key}: unknown reason code{did_you_mean(code, REASONS)}")
        elif key not in leaves and key not in containers:
            parent, _, name = key.rpartition(".")
            siblings = [
                k.rpartition(".")[2] for k in (*leaves, *containers) if k.rpartition(".")[0] == parent
            ]
            raise PolicyError(f"{source}: {parent}.cite.{name}: no such key{did_you_mean(name, siblings)}")
        if sid not in sources:
            raise PolicyError(
                f"{source}: {key}: unknown source id {sid!r}{did_you_mean(sid, sources)}"
                f" (known: {', '.join(sorted(sources))})"
            )
    for key, value in leaves.items():
        if value is None:
            continue
        parts = key.split(".")
        cited = any(".".join(parts[:i]) in cites for i in range(len(parts), 1, -1))
        if not cited:
            section, _, rest = key.rpartition(".")
            raise PolicyError(
                f"{source}: {key}: no source — name it with `cite: {{{rest}: <source id>}}` in {section}"
            )
        name = parts[-1]
        if name in PERCENT_KEYS and _is_number(value) and not 0 <= value <= 100:
            raise PolicyError(f"{source}: {key}: a percentage must be between 0 and 100 (got {value!r})")


def _build(
    data: Mapping[str, Any], source: str, cites: Mapping[str, str], sources: Mapping[str, Source]
) -> Policy:
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
            raise PolicyError(
                f"{source}: pathways.{name}: unknown pathway{did_you_mean(name, PATHWAYS)}"
                f" (known: {', '.join(PATHWAYS)})"
            )
    _check_citations(_leaves(data), cites, sources, source)
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
    return Policy(
        id=str(data["id"]),
        version=str(data["version"]),
        general={k: float(v) for k, v in (data.get("general") or {}).items()},
        agents=agents,
        steroid_factors=factors,
        steroid={k: float(v) for k, v in steroid.items()},
        pathways={k: dict(v) for k, v in pathways.items()},
        instruments={str(k): dict(v) for k, v in instruments.items()},
        sources=dict(sources),
        cites=dict(cites),
        description=str(data.get("description") or ""),
    )


def _resolve(
    data: Mapping[str, Any], source: str, bases: Mapping[str, Mapping[str, Any]], seen: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, str], dict[str, Source]]:
    """The merged data, citations and sources of ``data`` over the built-in it extends. A value a
    file sets loses the citation of the base: the file must cite it again."""
    for key in data:
        if key not in _TOP_KEYS:
            raise PolicyError(f"{source}: {key}: unknown key{did_you_mean(key, _TOP_KEYS)}")
    own, own_cites = _split_cites(data, source)
    own_sources = _sources(data, source)
    parent = data.get("extends")
    if parent is None:
        own.pop("sources", None)
        return own, own_cites, own_sources
    if parent not in BUILTIN:
        raise PolicyError(
            f"{source}: extends: must name a built-in policy ({', '.join(BUILTIN)}), got {parent!r}"
            f"{did_you_mean(parent, BUILTIN)}"
        )
    if parent in seen:
        raise PolicyError(f"{source}: extends: cycle through {parent}")
    base, base_cites, base_sources = _resolve(bases[parent], parent, bases, (*seen, parent))
    merged = dict(base)
    for section in _SECTIONS:
        if section in own:
            if not isinstance(own[section], Mapping):
                raise PolicyError(f"{source}: {section}: must be a mapping")
            if section == "pathways":
                for name in own[section]:
                    if name not in PATHWAYS:
                        raise PolicyError(
                            f"{source}: pathways.{name}: unknown pathway{did_you_mean(name, PATHWAYS)}"
                        )
            merged[section] = _merge(base.get(section) or {}, own[section], section, source)
    merged["id"], merged["version"] = data.get("id"), data.get("version")
    merged["description"] = data.get("description") or ""
    merged.pop("extends", None)
    overridden = set(_leaves(own))
    cites = {
        k: v
        for k, v in base_cites.items()
        if k not in overridden and not any(k == c or k.startswith(c + ".") for c in own_cites)
    }
    cites.update(own_cites)
    return merged, cites, {**base_sources, **own_sources}


def build_policy(data: Mapping[str, Any], source: str, bases: Mapping[str, Mapping[str, Any]]) -> Policy:
    """The :class:`Policy` of parsed policy ``data`` (named ``source`` in messages). ``bases`` holds
    the parsed built-in profiles by name; ``extends`` resolves against them. Pure: reading the
    files is the loader's job (``services/recommender/policies``)."""
    merged, cites, sources = _resolve(data, source, bases)
    return _build(merged, source, cites, sources)
