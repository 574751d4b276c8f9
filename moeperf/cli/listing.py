"""`moeperf list` (presets and implementations) and `moeperf env` (the fingerprint)."""

from __future__ import annotations

import argparse
import json

from moeperf.cli import fit
from moeperf.cli.common import add_plugin_option, resolve_device
from moeperf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="presets and implementations")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--matrix", action="store_true",
                   help="the capability matrix: implementation x modes, dtypes, devices, "
                        "activations, routing functions, shared experts, GPU, package")
    p.add_argument("--markdown", action="store_true",
                   help="with --matrix: moeperf's own implementations and peers as a markdown "
                        "table without installed versions (the README's)")
    add_plugin_option(p)
    p.set_defaults(func=run_list)
    p = sub.add_parser("env", help="print the environment fingerprint")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.set_defaults(func=run_env)


def run_list(args: argparse.Namespace) -> int:
    from moeperf import registry, spec
    from moeperf.registry import plugins

    if args.markdown and not args.matrix:
        raise UserError("--markdown goes with --matrix")
    if args.matrix:
        return _print_matrix(args.markdown)
    device = resolve_device(args.device)
    rows = []
    for name in spec.preset_names():
        s = spec.get_preset(name, device)  # what runs here: a model preset's CPU variant on CPU
        rows.append([name, s.description, ", ".join(f"{k}={v}" for k, v in s.axes.items()),
                     s.source])
    print(f"presets (on {device}; default: {spec.default_preset(device)})")
    print(fit.table(rows, ["preset", "what", "axes", "source"]))
    rows = []
    for impl in registry.all_implementations():
        reason = impl.unavailable(device)
        notes = [] if impl.provider == "moeperf" else [
            f"plugin: {impl.provider} {impl.provider_version or ''}".rstrip()]
        if impl.is_reference:
            notes.append("reference")
        if impl.baseline:
            notes.append("baseline")
        if impl.baseline_kind:
            notes.append({"param": "parameter-equal", "compute": "compute-equal baseline"}.get(
                impl.baseline_kind, impl.baseline_kind))
        if device == "cpu" and not impl.timed_on_cpu:
            notes.append("not timed on CPU by default")
        if not impl.in_default_sweep:
            notes.append("not in the default sweep")
        rows.append([impl.name, "yes" if reason is None else f"no: {reason}",
                     impl.description, ", ".join(notes)])
    print(f"\nimplementations (on {device})")
    print(fit.table(rows, ["implementation", "usable", "what", "notes"]))
    for line in plugins.broken_entry_points():
        print("\n" + fit.line(f"warning: plugin {line}"))
    return 0


def _print_matrix(as_markdown: bool) -> int:
    from moeperf import registry
    from moeperf.registry import capabilities
    from moeperf.registry import plugins

    if as_markdown:  # the README's table: moeperf and its own peers
        print(capabilities.markdown(capabilities.shipped()))
    else:
        print(fit.table(capabilities.matrix(registry.all_implementations()),
                        capabilities.HEADERS))
    for line in plugins.broken_entry_points():
        print("\n" + fit.line(f"warning: plugin {line}"))
    return 0


def run_env(args: argparse.Namespace) -> int:
    from moeperf.measure import fingerprint

    device = resolve_device(args.device)
    print(json.dumps(fingerprint(device), indent=2, sort_keys=True, default=str))
    return 0
