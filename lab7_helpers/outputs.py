"""Write output files atomically (to a temporary name, then renamed): an interrupted run never leaves half a file.
Shared by ``lab7 run``, ``lab7 judge`` and ``lab7 grade``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to ``path.tmp``, then rename: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def save_csv(frame: pd.DataFrame, path: Path) -> None:
    """A DataFrame as CSV (6 significant digits, ``\\n`` line ends: byte-identical across runs), atomically."""
    write_atomic(path, frame.to_csv(float_format="%.6g", lineterminator="\n"))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP: CSV injection)


def formula_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell (index included) that a spreadsheet would read as a formula prefixed with
    ``'``, which the spreadsheet shows but does not run. Numbers stay numbers."""
    def safe(value):
        return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    out = frame.copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].map(safe)
    out.index = out.index.map(safe)
    return out
