"""Datasheet peaks of a few common GPUs, to catch impossible results.

A measured throughput above the device's peak is a bug (a FLOP count that multiplies the
whole batch by E, a timer that missed a synchronisation), never a fast kernel. Figures are
dense (no 2:4 sparsity) tensor-core TFLOP/s at boost clock and HBM bandwidth, from NVIDIA's
datasheets. Unknown devices (and CPUs) are not checked. float32 matmuls may run as TF32 when
TF32 is allowed, so they are then checked against the TF32 figure. Experts in an fp8 format
(moeperf.spec.quant PEAK_DTYPE) are checked against the device's dense fp8 figure (H100/H200
SXM 1,979 TFLOP/s); a device without fp8 tensor cores keeps its bf16 figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moeperf.spec.quant import PEAK_DTYPE


@dataclass(frozen=True)
class DevicePeak:
    name: str
    tflops: dict[str, float]  # by dtype: float32 (no TF32), tf32, bfloat16, float16, float8
    tbytes_per_s: float  # DRAM bandwidth, TB/s

    def flops_limit(self, dtype: str, tf32_allowed: bool, quant: str = "none") -> float:
        if PEAK_DTYPE.get(quant) == "float8" and "float8" in self.tflops:
            return self.tflops["float8"]
        if dtype == "float32" and tf32_allowed:
            return self.tflops["tf32"]
        return self.tflops[dtype]


def _peak(name: str, fp32: float, tf32: float, half: float, tb_s: float,
          fp8: float | None = None) -> DevicePeak:
    tflops = {"float32": fp32, "tf32": tf32, "bfloat16": half, "float16": half}
    if fp8 is not None:
        tflops["float8"] = fp8
    return DevicePeak(name, tflops, tb_s)


# (pattern on torch's device name, peak); the first match wins, so specific names come first.
_TABLE: list[tuple[str, DevicePeak]] = [
    # GH200 before H200 (its name contains "H200"): 4.0 TB/s with HBM3, 4.9 with HBM3e.
    (r"GH200.*(HBM3e|144)", _peak("GH200 HBM3e", 67.0, 494.7, 989.4, 4.9, 1979.0)),
    (r"GH200", _peak("GH200", 67.0, 494.7, 989.4, 4.0, 1979.0)),
    (r"H200.*NVL", _peak("H200 NVL", 60.0, 417.5, 835.5, 4.8, 1671.0)),
    (r"H200", _peak("H200", 67.0, 494.7, 989.4, 4.8, 1979.0)),
    (r"H100.*NVL", _peak("H100 NVL", 60.0, 417.5, 835.5, 3.9, 1671.0)),
    (r"H100.*PCIe", _peak("H100 PCIe", 51.0, 378.0, 756.0, 2.0, 1513.0)),
    (r"H100", _peak("H100 SXM", 67.0, 494.7, 989.4, 3.35, 1979.0)),
    (r"A100.*SXM.*80GB", _peak("A100 SXM 80GB", 19.5, 156.0, 312.0, 2.039)),
    (r"A100.*80GB", _peak("A100 PCIe 80GB", 19.5, 156.0, 312.0, 1.935)),
    (r"A100", _peak("A100 40GB", 19.5, 156.0, 312.0, 1.555)),
    (r"L40S", _peak("L40S", 91.6, 183.0, 362.0, 0.864, 733.0)),
    (r"\bL4\b", _peak("L4", 30.3, 60.0, 121.0, 0.3, 242.5)),
]


def device_peak(device_name: str | None) -> DevicePeak | None:
    """The datasheet peak of a GPU by torch's device name, or None when it is not known."""
    if not device_name:
        return None
    for pattern, peak in _TABLE:
        if re.search(pattern, device_name, re.IGNORECASE):
            return peak
    return None


def throughput_check(device_name: str | None, dtype: str, tflops_per_s: float | None,
                     gbytes_per_s: float | None, *, tf32_allowed: bool = False,
                     bytes_checked: bool = True, quant: str = "none") -> tuple[dict, str | None]:
    """(peak fields for the record, error message or None) for an achieved throughput.

    `bytes_checked=False` when the L2 cache was not flushed: data then may come from cache,
    and a compulsory-traffic rate above DRAM bandwidth is possible.
    """
    peak = device_peak(device_name)
    if peak is None:
        return {}, None
    limit = peak.flops_limit(dtype, tf32_allowed, quant)
    what = f"{quant} experts" if limit == peak.tflops.get("float8") and quant != "none" else dtype
    fields = {"peak_device": peak.name, "peak_tflops": limit,
              "peak_gbytes_per_s": peak.tbytes_per_s * 1e3}
    errors = []
    if tflops_per_s is not None:
        fields["pct_of_peak_flops"] = 100 * tflops_per_s / limit
        if tflops_per_s > limit:
            errors.append(f"{tflops_per_s:.1f} TFLOP/s is above the {peak.name} {what} peak "
                          f"of {limit:g} TFLOP/s")
    if gbytes_per_s is not None:
        fields["pct_of_peak_bandwidth"] = 100 * gbytes_per_s / (peak.tbytes_per_s * 1e3)
        if bytes_checked and gbytes_per_s > peak.tbytes_per_s * 1e3:
            errors.append(f"{gbytes_per_s:.0f} GB/s of compulsory traffic is above the "
                          f"{peak.name} bandwidth of {peak.tbytes_per_s * 1e3:g} GB/s")
    if not errors:
        return fields, None
    return fields, ("impossible result: " + "; ".join(errors)
                    + " (a FLOP/byte count or timing bug)")
