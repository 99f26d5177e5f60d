"""Human units for the app: ms, MiB, 12.3k parameters. One place, so the table, the detail view,
compare and the charts never disagree (the records keep raw SI units: seconds, bytes, counts)."""
from __future__ import annotations

import math
from typing import Any


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def count(v: Any) -> str:
    """12 -> '12', 12345 -> '12.3k', 2.5e6 -> '2.5M' (parameters, FLOPs, sizes)."""
    if not is_num(v):
        return "-"
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


def ms(seconds: Any) -> str:
    """Seconds -> milliseconds, three significant digits ('0.0287' ms, '12.4' ms)."""
    return "-" if not is_num(seconds) else f"{seconds * 1e3:.3g}"


def mib(nbytes: Any) -> str:
    """Bytes -> MiB with three significant digits."""
    return "-" if not is_num(nbytes) else f"{nbytes / 2**20:.3g}"


def size_bytes(nbytes: Any) -> str:
    """Bytes with their own unit: '512 B', '4.5 KiB', '1.2 MiB'."""
    if not is_num(nbytes):
        return "-"
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(nbytes) >= div:
            return f"{nbytes / div:.3g} {unit}"
    return f"{nbytes:.0f} B"


def plain(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) < 1e7 else f"{v:.4g}"
    return str(v)


def metric_value(metric: str, value: Any, unit: str | None = None) -> tuple[str, str]:
    """(text, unit) of one figure in human units, from its column or metric name and raw unit."""
    name = metric.split("[", 1)[0].split("@", 1)[0]
    if name.startswith(("latency_p", "train_seconds")) or unit == "s":
        return ms(value), "ms"
    if name.startswith("memory_") or name.endswith("_bytes") or unit == "B":
        return mib(value), "MiB"
    if name.startswith(("params_", "flops_")):
        return count(value), "" if name.startswith("params_") else "FLOPs"
    if name == "latency_ratio":
        return ("-" if not is_num(value) else f"{value:.3g}×"), "× ref"
    return plain(value), unit or ""


def duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
