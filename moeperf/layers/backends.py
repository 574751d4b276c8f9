"""The expert backends SigmaMoE can run, by name: one table, written out.

Each backend is declared beside its code (an ExpertBackend: its function, what it computes,
where it runs, its memory plan); this table lists the built-in ones. Importing a backend's
module registers nothing. The registry derives `moe-<backend>` and every
`moe-<routing>-<backend>` implementation from this table when it builds itself.
`register_backend` adds one at run time (a user's own backend, or a test's).
"""

from __future__ import annotations

from moeperf.layers.experts import GROUPED_MM, LOOP, PADDED_BMM, ExpertBackend
from moeperf.layers.lean_experts import LEAN, LEAN_RECOMPUTE
from moeperf.layers.scaled_grouped import SCALED_GROUPED_MM
from moeperf.layers.triton_experts import TRITON

EXPERT_BACKENDS: dict[str, ExpertBackend] = {
    backend.name: backend
    for backend in (LOOP, GROUPED_MM, PADDED_BMM, TRITON, LEAN, LEAN_RECOMPUTE,
                    SCALED_GROUPED_MM)
}


def register_backend(backend: ExpertBackend) -> None:
    """Add (or replace) an expert backend by its name."""
    EXPERT_BACKENDS[backend.name] = backend


def available_backends() -> list[str]:
    """The backends usable in this process (triton needs triton and a GPU or its interpreter)."""
    return [name for name, b in EXPERT_BACKENDS.items() if b.unavailable_reason() is None]
