"""Checkpoint points given by hand on grading.html (its "Export CSV" button writes ``scores.csv``), merged into
grades.csv by ``lab7 grade ... --manual scores.csv``.

``scores.csv`` has one row per student and Checkpoint: ``student,checkpoint,points,comment``. Empty points mean
"not graded yet" (a comment alone is kept). Every row is checked against the rubric and the students graded; a bad
row is an error that names its line, so no point is lost or misfiled silently.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

from ..outputs import FORMULA_STARTS
from .identity import clean_name

COLUMNS = ("student", "checkpoint", "points", "comment")


def unescaped(cell: str) -> str:
    """A cell as written before ``outputs.formula_safe`` guarded it (``'=...`` -> ``=...``)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


class ManualScoresError(ValueError):
    """scores.csv cannot be merged (the message names the file, line and field)."""


def read_scores(path: str | Path, rubric: dict) -> dict[tuple[str, str], dict]:
    """``{(student, checkpoint): {"points": float | None, "comment": str, "line": int}}`` from ``path``."""
    path = Path(path)
    checkpoints = rubric.get("checkpoints", {})
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManualScoresError(f"{path}: cannot read the manual scores: {err}") from err
    if not rows or tuple(c.strip() for c in rows[0][:4]) != COLUMNS:
        raise ManualScoresError(f"{path}: line 1 must be the header {','.join(COLUMNS)} (as grading.html exports it)")
    scores: dict[tuple[str, str], dict] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            raise ManualScoresError(f"{path}: line {line}: expected {','.join(COLUMNS)}, got {len(row)} fields")
        # names as grades.csv writes them (identity.clean_name): a stray space or "\r" still finds the student
        student, checkpoint, text = clean_name(unescaped(row[0])), row[1].strip(), row[2].strip()
        comment = unescaped(row[3].strip()) if len(row) > 3 else ""
        if checkpoint not in checkpoints:
            raise ManualScoresError(f"{path}: line {line}: unknown Checkpoint {checkpoint!r} "
                                    f"(the rubric has {', '.join(checkpoints)})")
        most = checkpoints[checkpoint]["points"]
        points = None
        if text:
            try:
                points = float(text)
            except ValueError:
                raise ManualScoresError(f"{path}: line {line}: points {text!r} is not a number") from None
            if not math.isfinite(points) or not 0 <= points <= most:
                raise ManualScoresError(f"{path}: line {line}: {points:g} points for {checkpoint} is out of range "
                                        f"(0 to {most:g})")
        if (student, checkpoint) in scores:
            raise ManualScoresError(f"{path}: line {line}: {student} / {checkpoint} already has a row "
                                    f"(line {scores[student, checkpoint]['line']})")
        scores[student, checkpoint] = {"points": points, "comment": comment, "line": line}
    return scores


def merge_scores(grades: pd.DataFrame, scores: dict[tuple[str, str], dict], rubric: dict,
                 path: str | Path = "scores.csv") -> pd.DataFrame:
    """grades.csv with, per Checkpoint, ``<id> points`` and ``<id> comment``; ``automatic`` (the automatic total),
    ``manual``, ``total`` = both, ``max`` = both maxima, and ``not graded by hand`` listing Checkpoints without
    points (so a missing score never reads as a silent zero)."""
    unknown = [(v["line"], s) for (s, _), v in scores.items() if s not in grades.index]
    if unknown:
        line, student = min(unknown)
        raise ManualScoresError(f"{path}: line {line}: unknown student {student!r} (not among the "
                                f"{len(grades)} graded: {', '.join(map(str, grades.index[:5]))}"
                                f"{', ...' if len(grades) > 5 else ''})")
    merged = grades.copy()
    checkpoints = rubric.get("checkpoints", {})
    merged["automatic"] = grades["total"]
    for key in checkpoints:
        merged[f"{key} points"] = [scores.get((s, key), {}).get("points") for s in grades.index]
        merged[f"{key} comment"] = [scores.get((s, key), {}).get("comment", "") for s in grades.index]
    points = merged[[f"{key} points" for key in checkpoints]].astype(float)
    merged["manual"] = points.sum(axis=1, min_count=0)
    merged["not graded by hand"] = [", ".join(k for k in checkpoints if pd.isna(points.loc[s, f"{k} points"]))
                                    for s in grades.index]
    merged["total"] = merged["automatic"] + merged["manual"]
    merged["max"] = grades["max"] + sum(c["points"] for c in checkpoints.values())
    return merged
