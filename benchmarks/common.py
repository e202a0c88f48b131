"""Shared pieces of the benchmarks: the machine's matmul rate, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_gflops(seconds: float = 2.0, n: int = 1024) -> float:
    """This machine's fp32 matrix-multiply rate right now (GFLOP/s), on torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def print_table(rows: list[dict], title: str) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(fmt(row[c]).ljust(widths[c]) for c in columns))


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def save_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), **data}, indent=2)
                   + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path.relative_to(RESULTS.parent.parent)}")
    return path
