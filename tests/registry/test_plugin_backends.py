"""Plugin API version 3: a plugin's expert backends (moeperf_expert_backends()) join the
table of expert backends and the registry as moe-<name>; a wrong one is one line, exit 2."""

from __future__ import annotations

import sys
import types

import pytest

from moeperf import plugins, registry
from moeperf.layers import EXPERT_BACKENDS
from moeperf.registry import plugins as plugin_table


def _module(name: str, backends) -> types.ModuleType:
    module = types.ModuleType(name)
    module.moeperf_implementations = lambda: []
    module.moeperf_expert_backends = lambda: backends
    sys.modules[name] = module
    return module


@pytest.fixture
def cleanup():
    added = []
    yield added
    for name in added:
        EXPERT_BACKENDS.pop(name, None)
        registry.table.unregister(f"moe-{name}")
        sys.modules.pop(f"plug_{name}", None)


def test_a_plugins_expert_backend_is_registered_and_derived(cleanup):
    backend = plugins.ExpertBackend("twin_loop", EXPERT_BACKENDS["loop"].fn, "loop, again",
                                    in_default_sweep=False)
    _module("plug_twin_loop", [backend])
    cleanup.append("twin_loop")
    names = plugin_table.load_module("plug_twin_loop")
    assert names == ["moe-twin_loop"] and EXPERT_BACKENDS["twin_loop"] is backend
    impl = registry.get("moe-twin_loop")
    assert impl.provider == "plug_twin_loop" and impl.reference == "moe-loop"
    assert not impl.in_default_sweep
    assert any(m.__name__ == "plug_twin_loop" for m in plugin_table.loaded_modules())


@pytest.mark.parametrize("backends, message", [
    (["not a backend"], "not a moeperf.plugins.ExpertBackend"),
    ([plugins.ExpertBackend("loop", EXPERT_BACKENDS["loop"].fn, "a second loop")],
     "expert backend 'loop' is already registered"),
])
def test_a_wrong_expert_backend_is_refused_by_name(backends, message, cleanup):
    _module("plug_wrong", backends)
    cleanup.append("wrong")
    with pytest.raises(plugins.PluginError, match=message):
        plugin_table.load_module("plug_wrong")
