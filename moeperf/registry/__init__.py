"""Implementations: what each one is (implementation.py), the one table of them (table.py,
filled with the built-ins of builtins.py on first use), plugins from outside moeperf
(plugins.py) and the capability matrix (capabilities.py).

Tests, bench/ and the sweep all draw implementations from here and check them against the
same references.
"""

from moeperf.registry.implementation import (DEFAULT_REFERENCE, DEVICES, DTYPE, KINDS, MODES,
                                             NAME_PREFIXES, Implementation,
                                             declaration_problem)
from moeperf.registry.table import (all_implementations, available, build, default_for_sweep,
                                    find, get, groups_missing, identity_of, register,
                                    register_moe_backend, resolve, unregister)

__all__ = ["DEFAULT_REFERENCE", "DEVICES", "DTYPE", "KINDS", "MODES", "NAME_PREFIXES",
           "Implementation", "all_implementations", "available", "build",
           "declaration_problem", "default_for_sweep", "find", "get", "groups_missing",
           "identity_of", "register", "register_moe_backend", "resolve", "unregister"]
