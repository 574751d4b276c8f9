"""Summary statistics of timing samples: median with p20/p80, spread, noise flag."""

from __future__ import annotations

import numpy as np

# A point whose coefficient of variation exceeds this is flagged noisy.
NOISY_CV = 0.10


def summarize(samples_ms: list[float]) -> dict:
    """Median, p20/p80, IQR, mean, std, coefficient of variation, n, noisy flag."""
    if not samples_ms:
        raise ValueError("summarize: no samples")
    a = np.asarray(samples_ms, dtype=np.float64)
    p20, p25, median, p75, p80 = np.percentile(a, [20, 25, 50, 75, 80])
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    return {
        "time_ms_median": float(median),
        "time_ms_p20": float(p20),
        "time_ms_p80": float(p80),
        "time_ms_iqr": float(p75 - p25),
        "time_ms_mean": mean,
        "time_ms_std": std,
        "time_ms_min": float(a.min()),
        "time_cv": cv,
        "n_samples": int(a.size),
        "noisy": bool(cv > NOISY_CV),
    }
