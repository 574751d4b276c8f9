"""The capability matrix: what each registered implementation can run, from its declaration.

One row per expert backend (its routing variants folded into one row, `moe-[<routing>-]lean`)
and per other implementation: modes, dtypes, devices, activations, routing functions, shared
experts, expert formats (quant; "(fwd)": forward only), whether it needs a GPU, and its package (with the installed version, or the extra to
install). Rendered by `moeperf list --matrix` (and `--markdown`, the README's table).
"""

from __future__ import annotations

from moeperf.registry import Implementation
from moeperf.spec import QUANT_FORMATS

HEADERS = ["implementation", "kind", "modes", "dtypes", "devices", "activations",
           "routing functions", "shared experts", "needs a GPU", "package", "expert formats"]
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _groups(impls: list[Implementation]) -> list[list[Implementation]]:
    groups: dict[tuple, list[Implementation]] = {}
    for impl in impls:
        key = ((impl.kind, impl.family, impl.backend, impl.provider) if impl.backend
               else (impl.name,))
        groups.setdefault(key, []).append(impl)
    return list(groups.values())


def _label(group: list[Implementation]) -> str:
    if len(group) == 1:
        return group[0].name
    return f"{group[0].kind}-[<routing>-]{group[0].backend}"


def _needs_gpu(impl: Implementation) -> str:
    if "cpu" not in impl.devices:
        return "yes"
    if not impl.timed_on_cpu:
        return "no (CPU: Triton's interpreter, not timed)"
    return "no"


def _package(impl: Implementation, versions: bool) -> str:
    if impl.provider == "moeperf":
        return "moeperf"
    if not versions:
        return impl.provider
    return f"{impl.provider} {impl.provider_version or 'not installed'}"


def row(group: list[Implementation], versions: bool = True) -> list[str]:
    """One matrix row for implementations that differ only in their routing function."""
    impl = group[0]
    moe = impl.kind == "moe"
    routings = [i.routing for i in group if i.routing]
    if impl.activations is not None:
        activations = ", ".join(impl.activations)
    else:
        activations = "not declared" if moe or impl.kind == "dense" else "n/a"
    if not moe:
        shared = "n/a"
    else:
        shared = {True: "yes", False: "no", None: "not declared"}[impl.shared_experts]
    return [_label(group), impl.kind, ", ".join(impl.modes),
            ", ".join(DTYPE_SHORT.get(d, d) for d in impl.dtypes), ", ".join(impl.devices),
            activations, ", ".join(routings) if moe and routings else "n/a", shared,
            _needs_gpu(impl), _package(impl, versions), _formats(impl) if moe else "n/a"]


def _formats(impl: Implementation) -> str:
    """The expert formats it runs; the forward-only ones marked (fwd)."""
    return ", ".join(q if q == "none" or QUANT_FORMATS[q].trainable else f"{q} (fwd)"
                     for q in impl.quants)


def matrix(impls: list[Implementation], versions: bool = True) -> list[list[str]]:
    """The rows for these implementations, in registry order."""
    return [row(group, versions) for group in _groups(impls)]


def markdown(impls: list[Implementation], versions: bool = False) -> str:
    """The matrix as a GitHub markdown table (the README's: no installed versions)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join([f"`{cells[0]}`", *cells[1:]]) + " |"
              for cells in matrix(impls, versions)]
    return "\n".join(lines)


def shipped() -> list[Implementation]:
    """moeperf's built-ins (registry order) and its own peers (the entry points of moeperf's
    distribution, loaded here; by package name): what the README's table shows, whatever
    else is installed."""
    from importlib import metadata

    from moeperf import registry
    from moeperf.registry import plugins

    names = {impl.name for impl in registry.all_implementations() if impl.provider == "moeperf"}
    try:
        points = [ep for ep in metadata.distribution("moeperf").entry_points
                  if ep.group == plugins.ENTRY_POINT_GROUP]
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        points = []
    for ep in points:
        names.update(plugins.load_module(ep.value))
    ordered = [impl for impl in registry.all_implementations() if impl.name in names]
    order = {impl.name: i for i, impl in enumerate(ordered)}  # built-ins, then peers by package
    return sorted(ordered, key=lambda impl: (impl.provider != "moeperf",
                                             "" if impl.provider == "moeperf" else impl.provider,
                                             order[impl.name]))
