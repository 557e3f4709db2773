"""The policy files: the built-in profiles beside this module and custom YAML files.

:func:`load_policy` is the one place a policy is read and the one cache of policies in a process:
a built-in is parsed once; a custom file is parsed again only when its modification time or size
changes.
"""

from __future__ import annotations

import os
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

from services.recommender.engine.policy import BUILTIN, Policy, PolicyError, build_policy

POLICY_DIR = Path(__file__).resolve().parent

#: libyaml's safe loader when the wheel has it (about ten times faster than the pure-Python one).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["BUILTIN", "POLICY_DIR", "Policy", "PolicyError", "load_policy", "read_policy_file"]


def read_policy_file(path: Path) -> dict[str, Any]:
    """A policy file's mapping, or :class:`PolicyError` naming the file and what is wrong."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy must be a mapping with id, version and pathways")
    return data


@cache
def _builtin_data() -> dict[str, dict[str, Any]]:
    return {name: read_policy_file(POLICY_DIR / f"{name}.yaml") for name in BUILTIN}


@lru_cache(maxsize=32)
def _file_policy(path: str, _mtime_ns: int, _size: int) -> Policy:
    data = read_policy_file(Path(path))
    if "extends" not in data:
        data = {**data, "extends": "cms-lcd"}
    return build_policy(data, path, _builtin_data())


@cache
def _builtin_policy(name: str) -> Policy:
    return build_policy(_builtin_data()[name], name, _builtin_data())


def load_policy(name_or_path: str) -> Policy:
    """A built-in profile by name, or a YAML file (``extends`` a built-in; see
    :mod:`services.recommender.engine.policy`)."""
    if name_or_path in BUILTIN:
        return _builtin_policy(name_or_path)
    try:
        stat = os.stat(name_or_path)
    except OSError:
        raise PolicyError(f"{name_or_path}: no such built-in policy ({', '.join(BUILTIN)}) or file") from None
    return _file_policy(name_or_path, stat.st_mtime_ns, stat.st_size)
