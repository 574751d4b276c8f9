"""The one table of implementations: tests, bench/ and the sweep all draw from here.

It fills itself with the built-in implementations (builtins.py) the first time it is read;
plugins (plugins.py) and tests add to it with `register`. Importing a module registers
nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from moeperf.errors import UserError
from moeperf.layers.router_functions import ROUTING_VARIANTS
from moeperf.registry.builtins import builtin_implementations, moe_backend_implementation
from moeperf.registry.implementation import Implementation, declaration_problem
from moeperf.spec import LayerShape

_REGISTRY: dict[str, Implementation] = {}
_BUILT = False


def _table() -> dict[str, Implementation]:
    """The table, with the built-in implementations added on first use."""
    global _BUILT
    if not _BUILT:
        _BUILT = True
        for impl in builtin_implementations():
            register(impl)
    return _REGISTRY


def register(impl: Implementation, *, replace: bool = True) -> Implementation:
    """Add an implementation; with replace=False a name already registered is an error."""
    problem = declaration_problem(impl)
    if problem is not None:
        raise ValueError(f"implementation {impl.name!r}: {problem}")
    table = _table()
    if not replace and impl.name in table:
        other = table[impl.name]
        raise ValueError(f"implementation {impl.name!r} is already registered "
                         f"(by {other.provider})")
    table[impl.name] = impl
    return impl


def unregister(name: str) -> None:
    """Remove an implementation (a test's, or a plugin's being reloaded)."""
    _table().pop(name, None)


def all_implementations() -> list[Implementation]:
    return list(_table().values())


def get(name: str) -> Implementation:
    table = _table()
    if name not in table:
        raise UserError(f"unknown implementation {name!r}; available: {', '.join(table)}")
    return table[name]


def find(name: str) -> Implementation | None:
    """The registered implementation of that name, or None."""
    return _table().get(name)


def identity_of(name: str) -> dict | None:
    """The typed identity of a registered implementation (None for an unknown name)."""
    impl = find(name)
    return impl.identity() if impl is not None else None


def available(device: str) -> list[Implementation]:
    return [impl for impl in _table().values() if impl.unavailable(device) is None]


def default_for_sweep(device: str) -> list[Implementation]:
    """What `moeperf sweep` times when no --impl is given."""
    return [impl for impl in available(device)
            if impl.in_default_sweep and (device != "cpu" or impl.timed_on_cpu)]


def resolve(names: list[str] | None, device: str) -> list[Implementation]:
    """--impl names (None: the default set) -> implementations usable on `device`."""
    if not names:
        return default_for_sweep(device)
    impls = []
    for name in names:
        impl = get(name)
        reason = impl.unavailable(device)
        if reason is not None:
            raise UserError(f"implementation {name!r} cannot run on {device}: {reason}")
        impls.append(impl)
    return impls


def build(impl: Implementation, shape: LayerShape, device: str | torch.device = "cpu",
          seed: int = 0) -> nn.Module:
    """impl's module at `shape` (a from_reference one built from its reference's module)."""
    reference = get(impl.reference) if impl.from_reference is not None else None
    return impl.build(shape, device, seed, reference=reference)


def register_moe_backend(backend: str, routing: str = "sigma", *,
                         timed_on_cpu: bool | None = None) -> Implementation:
    """Register the implementation of an expert backend added at run time
    (moeperf.layers.register_backend) with a routing variant (builtins.py says how)."""
    return register(moe_backend_implementation(backend, routing, timed_on_cpu=timed_on_cpu))


def groups_missing(impl: Implementation, shape: LayerShape) -> str | None:
    """Bad input: an implementation whose routing needs n_group at a point without one."""
    variant = ROUTING_VARIANTS.get(impl.routing) if impl.routing else None
    if variant is not None and variant.needs_groups and not shape.n_group:
        return (f"{impl.name}: routing {impl.routing} needs n_group and topk_group (e.g. "
                f"--set n_group=8 --set topk_group=4); this point has n_group=0")
    return None
