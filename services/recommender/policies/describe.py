"""``pinpoint policy show``: a policy's resolved values, each with the source it cites."""

from __future__ import annotations

from typing import Any

from services.recommender.engine.policy import PERCENT_KEYS, Policy


def _value(key: str, value: Any) -> str:
    if value is None:
        return "off (null)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float):
        value = round(value, 4)
    return f"{value} %" if key.rsplit(".", 1)[-1] in PERCENT_KEYS else str(value)


def _line(policy: Policy, key: str, value: Any, indent: str, width: int) -> str:
    name = key.rsplit(".", 1)[-1]
    source = policy.source(key)
    cited = source.label if source else ("—" if value is None else "NO SOURCE")
    return f"{indent}{name:<{width}} {_value(key, value):<14} {cited}"


def describe(policy: Policy) -> str:
    """The resolved thresholds, counts, windows and rules, each with its source, then the sources."""
    lines = [
        f"Policy {policy.id} version {policy.version}"
        + (f" — {policy.description}" if policy.description else "")
    ]
    lines += ["", "general"]
    for key, value in policy.general.items():
        lines.append(_line(policy, f"general.{key}", value, "  ", 34))
    lines += ["", "agents (minutes)"]
    for name, agent in policy.agents.items():
        for attr in ("minimum_minutes", "prolonged_minutes"):
            key = f"agents.{name}.{attr}"
            source = policy.source(key)
            label = source.label if source else "NO SOURCE"
            lines.append(f"  {name + '.' + attr:<34} {_value(key, getattr(agent, attr)):<14} {label}")
    lines += ["", "steroid"]
    for name, factor in policy.steroid_factors.items():
        lines.append(_line(policy, f"steroid.factors.{name}", factor, "  factor ", 27))
    for key, value in policy.steroid.items():
        lines.append(_line(policy, f"steroid.{key}", value, "  ", 34))
    if policy.instruments:
        lines += ["", "instruments (direction, range, minimal important change)"]
        for name, spec in policy.instruments.items():
            source = policy.source(f"instruments.{name}")
            shown = f"{spec.get('direction')}, {spec.get('low')}-{spec.get('high')}, MCID {spec.get('mcid')}"
            lines.append(f"  {name:<12} {shown:<40} {source.label if source else 'NO SOURCE'}")
    lines += ["", "pathways"]
    for pathway, params in policy.pathways.items():
        lines.append(f"  {pathway}")
        for key, value in params.items():
            if isinstance(value, dict):  # documentation: item -> {source, required}
                for item, spec in value.items():
                    dotted = f"pathways.{pathway}.{key}.{item}"
                    source = policy.source(dotted)
                    required = "required" if (spec or {}).get("required", True) else "optional"
                    label = source.label if source else "NO SOURCE"
                    lines.append(f"    {key + ': ' + item:<32} {required:<14} {label}")
                continue
            lines.append(_line(policy, f"pathways.{pathway}.{key}", value, "    ", 32))
    rules = sorted(k for k in policy.cites if k.startswith("rules."))
    if rules:
        lines += ["", "rules without a number (reason: source)"]
        for key in rules:
            source = policy.source(key)
            lines.append(f"  {key.removeprefix('rules.'):<34} {source.label if source else key}")
    lines += ["", "sources"]
    for source in policy.sources.values():
        lines.append(f"  {source.id}: {source.label}")
        lines.append(f"    {source.title}")
        lines.append(f"    {source.publisher}, {source.date} — {source.url}")
    return "\n".join(lines) + "\n"
