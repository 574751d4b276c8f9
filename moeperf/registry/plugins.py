"""Implementations and presets from outside moeperf: the plugin API (version
PLUGIN_API_VERSION; public path `moeperf.plugins`).

A plugin is a Python module with a function `moeperf_implementations()` that returns
`Implementation`s (re-exported here), and optionally `moeperf_presets()` that returns
`Preset`s (version 2; a version-1 plugin, without it, works unchanged). An Implementation
declares:
    name                 starts with "dense" or "moe"; must not collide with another
    kind                 "dense" or "moe"
    description          one line
    from_reference       (reference_module, shape) -> its module, built from the reference's
                         weights in the canonical layout (see below)
    reference            what it is checked against (default: moe-loop / dense-torch)
    modes, dtypes, devices   what it supports (default: all); refuse(shape) -> a reason
    activations, shared_experts  the layer family it computes (default: ("relu",), False:
                         the paper's layer; gated or shared-expert points are skipped);
                         None: not declared, refuse(shape) decides
    provider             its distribution's name (the version is looked up, or give
                         provider_version); both are recorded with every result

Weights: the reference module (moeperf.layers.SigmaMoE for "moe", DenseMLP for "dense")
holds the weights in moeperf's canonical layout, w_router [E,D], w_up [E,D,G], w_down
[E,G,D] (gated: w_gate [E,D,G]; swiglu_oss: b_gate, b_up [E,G], b_down [E,D]; shared
experts: submodule `shared`, a DenseMLP) (DenseMLP: w_up [D,F], w_down [F,D], w_gate
[D,F]); `route(x_TD)` gives the reference's routing. What it computes on x_TD [T, D]
(output: the same shape and dtype): logits x_TD @ w_router.T plus the buffer router_bias_E
[E] when not None (the routing skew), gates sigmoid(logits), top-k of the gates (not
renormalised), y = sum_k gate_k * act(x @ w_up[e_k]) @ w_down[e_k] (act: shape.activation),
plus `shared`(x) on every token when shape.n_shared > 0.
The plugin maps them into its own layout. Gradients come back in the canonical layout:
either its parameters carry the canonical names, or its module has `canonical_grads()`
returning {canonical name: gradient}. The correctness gate compares the output and every
gradient with the reference's before anything is timed; a mismatch is recorded
'incorrect' and never timed. A point outside what it declares is recorded 'skipped'.

Presets: `Preset(sweep, cpu=None)`, a named `Sweep` as published and, optionally, the
CPU-sized variant that `moeperf sweep --preset NAME` runs on a CPU. The name must not
collide with another preset; the provider is the plugin's package.

Expert backends (version 3): the same module may have `moeperf_expert_backends()` returning
`ExpertBackend`s (moeperf.layers: a function with the backends' contract, what it computes,
where it runs). Each joins the table of expert backends (so `moeperf expert-parallel
--backend NAME` runs it on each rank's local experts) and the registry as `moe-<name>`
(checked against moe-loop; in the default sweep only if it says so). moeperf.parallel also
reads `moeperf_dispatchers()` from the loaded modules (moeperf.parallel.DispatcherSpec: a
token dispatcher for expert parallelism, e.g. a GPU all-to-all library's adapter).

Discovery: an installed package's entry point in the group ENTRY_POINT_GROUP, e.g.
    [project.entry-points."moeperf.implementations"]
    mypkg = "mypkg.moeperf_plugin"          # a module with moeperf_implementations()
and modules named by hand: `--plugin MODULE` (sweep, list, report, claims),
`--moeperf-plugin MODULE` (pytest bench/), or MOEPERF_PLUGINS=mod1,mod2. activate() exports
the modules it loaded to MOEPERF_PLUGINS, so worker processes (moeperf.run.isolation) and
torchrun ranks load the same plugins. A module named by hand that is wrong is bad input
(PluginError: one line, exit 2); a broken entry point is a warning, and the rest works.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from importlib import metadata
from typing import Iterable

from moeperf.errors import UserError
from moeperf.layers.backends import EXPERT_BACKENDS, register_backend
from moeperf.layers.experts import ExpertBackend
from moeperf.registry import table
from moeperf.registry.builtins import moe_backend_implementation
from moeperf.registry.implementation import Implementation, declaration_problem
from moeperf.spec.presets import Preset, add_presets
from moeperf.spec.sweep import Sweep

# 1: moeperf_implementations(); 2: adds the optional moeperf_presets() hook; 3: adds the
# optional moeperf_expert_backends() (and, read by moeperf.parallel, moeperf_dispatchers()).
PLUGIN_API_VERSION = 3
ENTRY_POINT_GROUP = "moeperf.implementations"
ENV_VAR = "MOEPERF_PLUGINS"
HOOK = "moeperf_implementations"
PRESETS_HOOK = "moeperf_presets"
BACKENDS_HOOK = "moeperf_expert_backends"
PLUGIN_KINDS = ("dense", "moe")

__all__ = ["PLUGIN_API_VERSION", "ENTRY_POINT_GROUP", "ENV_VAR", "ExpertBackend",
           "Implementation", "Preset",
           "PluginError", "Sweep", "activate", "broken_entry_points", "load_installed",
           "load_module"]

_loaded: dict[str, list[str]] = {}  # module spec -> the names it registered
_modules: dict[str, object] = {}  # module spec -> the module (or hook) it loaded
_broken: list[str] = []  # one line per entry point that could not be loaded
_entry_points_done = False


class PluginError(UserError):
    """A plugin asked for by hand cannot be used (one line naming it; exit 2)."""


def _hook_of(obj, spec: str):
    if callable(obj) and not isinstance(obj, type(sys)):
        return obj
    hook = getattr(obj, HOOK, None)
    if hook is None:
        raise PluginError(f"plugin {spec!r}: no {HOOK}() function in module {obj.__name__}")
    return hook


def _import(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PluginError(f"plugin {spec!r}: no module named {exc.name!r} "
                              "(is it installed, or on PYTHONPATH?)") from None
        raise PluginError(f"plugin {spec!r} failed to import: {type(exc).__name__}: "
                          f"{exc}") from None
    except Exception as exc:  # noqa: BLE001 - any import-time failure names the plugin
        raise PluginError(f"plugin {spec!r} failed to import: {type(exc).__name__}: "
                          f"{exc}") from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"plugin {spec!r}: module {module_name} has no {attr!r}") from None


def _checked(impl, spec: str) -> Implementation:
    """The plugin's declaration, validated; a plugin's provider defaults to its package."""
    if not isinstance(impl, Implementation):
        raise PluginError(f"plugin {spec!r}: {HOOK}() returned {type(impl).__name__}, "
                          "not a moeperf.plugins.Implementation")
    where = f"plugin {spec!r}, implementation {impl.name!r}"
    if impl.kind not in PLUGIN_KINDS:
        raise PluginError(f"{where}: unknown kind {impl.kind!r} (dense or moe)")
    if impl.from_reference is None or impl.build_fn is not None:
        raise PluginError(f"{where}: give from_reference (its module is built from the "
                          "reference's weights), not build_fn")
    problem = declaration_problem(impl)
    if problem is not None:
        raise PluginError(f"{where}: {problem}")
    other = table.find(impl.name)
    if other is not None:
        raise PluginError(f"{where}: the name is already registered by {other.provider}")
    if table.find(impl.reference) is None or impl.reference == impl.name:
        raise PluginError(f"{where}: reference {impl.reference!r} is not a registered "
                          "implementation")
    if impl.provider == "moeperf":
        package = spec.split(":")[0].split(".")[0]
        impl = dataclasses.replace(impl, provider=package, provider_version=None)
    return impl


def load_module(spec: str) -> list[str]:
    """Import a plugin module ("pkg.mod" or "pkg.mod:function") and register what it
    declares; the names registered. Anything wrong raises PluginError."""
    module_name, _, attr = spec.partition(":")
    key = f"{module_name}:{attr or HOOK}"  # "pkg.mod" and "pkg.mod:moeperf_implementations"
    if key in _loaded:
        return _loaded[key]
    obj = _import(spec)
    hook = _hook_of(obj, spec)
    declared = _called(hook, HOOK, spec)
    checked, names = [], set()
    for impl in declared:
        impl = _checked(impl, spec)
        if impl.name in names:
            raise PluginError(f"plugin {spec!r} declares {impl.name!r} twice")
        names.add(impl.name)
        checked.append(impl)
    presets_hook = None if attr else getattr(obj, PRESETS_HOOK, None)
    presets = [_checked_preset(p, spec) for p in _called(presets_hook, PRESETS_HOOK, spec)]
    backends_hook = None if attr else getattr(obj, BACKENDS_HOOK, None)
    backends = [_checked_backend(b, spec) for b in _called(backends_hook, BACKENDS_HOOK, spec)]
    for backend in backends:  # the layer's table first: the implementation derives from it
        register_backend(backend)
        impl = moe_backend_implementation(backend.name)
        checked.append(dataclasses.replace(impl, provider=spec.split(":")[0].split(".")[0],
                                           provider_version=None))
    for impl in checked:  # all or nothing
        table.register(impl, replace=False)
    try:
        add_presets(presets)
    except UserError as exc:
        for impl in checked:
            table.unregister(impl.name)
        raise PluginError(f"plugin {spec!r}: {exc}") from None
    _loaded[key] = [impl.name for impl in checked]
    _modules[key] = obj
    return _loaded[key]


def _checked_backend(backend, spec: str) -> ExpertBackend:
    """A plugin's expert backend (version 3), validated; its name must be new."""
    if not isinstance(backend, ExpertBackend):
        raise PluginError(f"plugin {spec!r}: {BACKENDS_HOOK}() returned "
                          f"{type(backend).__name__}, not a moeperf.plugins.ExpertBackend")
    if backend.name in EXPERT_BACKENDS or table.find(f"moe-{backend.name}") is not None:
        raise PluginError(f"plugin {spec!r}: expert backend {backend.name!r} is already "
                          "registered")
    return backend


def loaded_modules() -> list:
    """The plugin modules loaded in this process (stages above the registry read their own
    hooks from them, e.g. moeperf.parallel's moeperf_dispatchers())."""
    return [m for m in _modules.values() if isinstance(m, type(sys))]


def _called(hook, name: str, spec: str) -> list:
    """What a plugin's hook returns, as a list ([] without the hook)."""
    if hook is None:
        return []
    try:
        return list(hook())
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, named
        raise PluginError(f"plugin {spec!r}: {name}() raised {type(exc).__name__}: "
                          f"{exc}") from None


def _checked_preset(preset, spec: str) -> Preset:
    """A plugin's preset, validated; its provider is the plugin's package."""
    if not isinstance(preset, Preset) or not isinstance(preset.sweep, Sweep) or not (
            preset.cpu is None or isinstance(preset.cpu, Sweep)):
        raise PluginError(f"plugin {spec!r}: {PRESETS_HOOK}() returned "
                          f"{type(preset).__name__}, not a moeperf.plugins.Preset of Sweeps")
    return dataclasses.replace(preset, provider=spec.split(":")[0].split(".")[0])


def load_installed(warn: bool = True) -> None:
    """Load every installed entry point once (no export to workers; activate() does both)."""
    _load_entry_points(warn)


def _load_entry_points(warn: bool) -> None:
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            load_module(ep.value)
        except PluginError as exc:
            line = f"entry point {ep.name!r} ({ENTRY_POINT_GROUP}) skipped: {exc}"
            _broken.append(line)
            if warn:
                print(f"moeperf: warning: {line}", file=sys.stderr)


def requested_from_env() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def activate(modules: Iterable[str] = (), warn: bool = True) -> list[str]:
    """Load every installed entry point (a broken one is a warning, printed unless `warn` is
    False: workers leave that to their parent) and the named modules plus MOEPERF_PLUGINS (a
    wrong one raises PluginError); export the list for workers. Returns the names of the
    implementations plugins registered."""
    _load_entry_points(warn)
    wanted = list(dict.fromkeys([*requested_from_env(), *modules]))
    for spec in wanted:
        load_module(spec)
    if wanted:
        os.environ[ENV_VAR] = ",".join(wanted)
    return [name for names in _loaded.values() for name in names]


def broken_entry_points() -> list[str]:
    """One line per installed entry point that could not be loaded."""
    return list(_broken)
