"""Making records and telling them apart: one record per implementation x mode x shape x
device (long format; fields, units and statuses in schema.py)."""

from __future__ import annotations

import time
from typing import Iterable

from moeperf.results.schema import EP_KEY_FIELDS, FIELD_DEFAULTS, KEY_FIELDS, SCHEMA_VERSION
from moeperf.spec import LayerShape


def new_record(impl_name: str, kind: str, mode: str, shape: LayerShape, device: str,
               identity: dict | None = None, **fields) -> dict:
    """A record of one implementation x mode x shape x device. `identity`: the
    implementation's typed identity (family, routing, backend, provider, provider_version:
    Implementation.identity()), which the record carries from the moment it is made."""
    record = {"schema": SCHEMA_VERSION, "implementation": impl_name, "kind": kind,
              **(identity or {}), "mode": mode, **shape.as_dict(), "device": device,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record.update(fields)
    return record


def record_key(record: dict) -> tuple:
    """Identity of a measurement: implementation, mode, shape, dtype and device (and, for
    an expert-parallel one, its ranks and balance; None elsewhere)."""
    return (tuple(record.get(field, FIELD_DEFAULTS.get(field)) for field in KEY_FIELDS)
            + tuple(record.get(field) for field in EP_KEY_FIELDS))


def latest_by_key(records: Iterable[dict]) -> dict[tuple, dict]:
    """The last record of each key (a re-measured point replaces the earlier one)."""
    return {record_key(r): r for r in records}
