"""Runs: records that may be analysed together (one results file, one device).

Fits and verdicts never mix devices: records from different files (the `run` field that
`moeperf report A B` sets) or different device fingerprints are different runs.
"""

from __future__ import annotations


def device_name(record: dict) -> str:
    env = record.get("env") or {}
    return (env.get("comparable") or {}).get("device_name") or record.get("device", "?")


def split_runs(records: list[dict]) -> dict[str, list[dict]]:
    """{run label: records}, in first-seen order; the label names the device when needed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("run") or "", device_name(r)), []).append(r)
    several_devices_in_a_run = len({run for run, _ in groups}) < len(groups)
    out = {}
    for (run, device), rs in groups.items():
        if run and not several_devices_in_a_run:
            label = run
        else:
            label = f"{run} on {device}" if run else device
        out[label] = rs
    return out
