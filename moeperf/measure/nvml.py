"""NVML (pynvml from nvidia-ml-py): device memory in use, clocks and throttle reasons.

Everything here degrades to None / {} where there is no driver, no GPU or an old NVML: the
fields are then absent from records, never 0.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

# NVML clocks-event (throttle) reason bits, from nvml.h (nvmlClocksEventReason*).
_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


@contextlib.contextmanager
def handle_for(torch_index: int) -> Iterator[object | None]:
    """An NVML handle for torch's CUDA device `torch_index` (matched by UUID, so that
    CUDA_VISIBLE_DEVICES reordering is respected), or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: no NVML
        yield None
        return
    try:
        yield _lookup(pynvml, torch_index)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _lookup(pynvml, torch_index: int):
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(torch_index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-"))
                                                else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - older torch without .uuid, or MIG naming
        pass
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(torch_index)
    except Exception:  # noqa: BLE001
        return None


def used_bytes(handle) -> int | None:
    """Device memory in use (all processes), or None."""
    if handle is None:
        return None
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001
        return None


def decode_reasons(mask: int) -> list[str]:
    """Names of the set clocks-event (throttle) reason bits; 'none' when no bit is set."""
    names = [name for bit, name in _REASONS.items() if mask & bit]
    unknown = mask & ~sum(_REASONS)
    if unknown:
        names.append(f"other_0x{unknown:x}")
    return names or ["none"]


def device_state(handle) -> dict:
    """Driver, clocks, throttle reasons, temperature and power of one GPU (what is known)."""
    if handle is None:
        return {}
    import pynvml

    queries = {
        "driver_version": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle,
                                                                     pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "max_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle,
                                                                      pynvml.NVML_CLOCK_MEM),
        "clock_event_reasons": lambda: decode_reasons(_reason_mask(pynvml, handle)),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle,
                                                                 pynvml.NVML_TEMPERATURE_GPU),
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        "power_limit_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
        "persistence_mode": lambda: bool(pynvml.nvmlDeviceGetPersistenceMode(handle)),
    }
    state = {}
    for name, query in queries.items():
        try:
            value = query()
        except Exception:  # noqa: BLE001 - a query this GPU or driver does not support
            continue
        state[name] = value.decode() if isinstance(value, bytes) else value
    return state


def _reason_mask(pynvml, handle) -> int:
    if hasattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons"):
        return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
    return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
