"""A cheaper constructor for the frozen, slotted dataclasses the normaliser and the engine create
by the thousand per patient.

The ``__init__`` that ``dataclasses`` writes for a frozen class sets each field through
``object.__setattr__`` looked up at every call; :func:`quick_init` replaces it with one that
calls each slot's own setter, bound once (same parameters, defaults, default factories and
``__post_init__``): about half the cost. The class stays frozen (assignment still raises);
equality, hashing, ``repr`` and :func:`dataclasses.replace` are the dataclass's own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()


def quick_init(cls: type[T]) -> type[T]:
    """Give a ``@dataclass(frozen=True, slots=True)`` class the faster ``__init__``."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not (params.frozen and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls.__name__}: quick_init is for frozen, slotted dataclasses")
    namespace: dict[str, Any] = {"_MISSING": _MISSING}
    args: list[str] = []
    kwonly: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: fields outside __init__ are not supported")
        name = f.name
        if f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = f.default_factory
            arg = f"{name}=_MISSING"
            body.append(f"    if {name} is _MISSING:\n        {name} = _factory_{name}()\n")
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = f.default
            arg = f"{name}=_default_{name}"
        else:
            arg = name
        (kwonly if f.kw_only else args).append(arg)
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        body.append(f"    _set_{name}(self, {name})\n")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()\n")
    signature = ", ".join(["self", *args, *(["*", *kwonly] if kwonly else [])])
    source = f"def __init__({signature}) -> None:\n" + ("".join(body) or "    pass\n")
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


_REPLACERS: dict[type, Any] = {}


def quick_replace(obj: T, /, **changes: Any) -> T:
    """:func:`dataclasses.replace` for a :func:`quick_init` class at a fraction of its cost (which
    lists the fields and builds the arguments anew on every call): the copy is built by a function
    written once per class, through the class's own ``__init__`` (``__post_init__`` runs)."""
    cls = type(obj)
    replacer = _REPLACERS.get(cls)
    if replacer is None:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        args = ", ".join(f"{n}=c[{n!r}] if {n!r} in c else o.{n}" for n in names)
        namespace: dict[str, Any] = {"cls": cls}
        exec(f"def replace(o, c):\n    return cls({args})\n", namespace)
        replacer = _REPLACERS[cls] = (frozenset(names), namespace["replace"])
    known, build = replacer
    if not known.issuperset(changes):
        raise TypeError(f"{cls.__name__}: no field {sorted(set(changes) - known)[0]!r}")
    result: T = build(obj, changes)
    return result
