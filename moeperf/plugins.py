"""The plugin API's public path (`moeperf.plugins`): implementations and presets from outside
moeperf. The code lives in moeperf.registry.plugins; its docstring is the field reference
(`help(moeperf.plugins.Implementation)` answers for each field)."""

from moeperf.registry.plugins import (BACKENDS_HOOK, ENTRY_POINT_GROUP, ENV_VAR, HOOK,
                                      PLUGIN_API_VERSION, PRESETS_HOOK, ExpertBackend,
                                      Implementation, PluginError, Preset, Sweep, activate,
                                      broken_entry_points, load_installed, load_module,
                                      requested_from_env)
from moeperf.registry.plugins import __doc__ as _api_doc

__doc__ = __doc__ + "\n\n" + (_api_doc or "")
__all__ = ["BACKENDS_HOOK", "ENTRY_POINT_GROUP", "ENV_VAR", "ExpertBackend", "HOOK",
           "PLUGIN_API_VERSION", "PRESETS_HOOK", "Implementation", "PluginError", "Preset",
           "Sweep", "activate", "broken_entry_points", "load_installed", "load_module",
           "requested_from_env"]
