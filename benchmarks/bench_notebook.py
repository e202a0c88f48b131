"""The student's clock: execute the solution notebook and the student notebook (its TODO cells filled with the
solution's code, as a student who finished them would have) and time every cell.

    python benchmarks/bench_notebook.py                      # smollm2-135m, the sample data
    python benchmarks/bench_notebook.py --model tiny-gpt2    # seconds: checks the script runs
    python benchmarks/bench_notebook.py --solution-only      # the solution notebook only
    python benchmarks/bench_notebook.py --pairs my_lab6.jsonl # a student's own file instead of the sample
    python benchmarks/bench_notebook.py --lab6-sized         # every 6th pair of the sample: 21, a Lab 6 file's size

Prints the heavy cells side by side (solution, student, ratio), the totals and this machine's fp32 matmul rate
before and after (seconds only compare across days at the same rate), and writes benchmarks/results/notebook.json
(notebook_<file name>.json with --pairs). Colab-only cells are skipped, as in the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops, print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 180  # the whole solution notebook on 2 CPU cores


def build(kind: str):
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(kind)


def finished_student_notebook():
    """The student notebook with each TODO cell replaced by the solution's: every other cell is the student's."""
    student, solution = build("student"), build("solution")
    for mine, theirs in zip(student.cells, solution.cells):
        if "todo" in mine.metadata.get("tags", []):
            mine.source = theirs.source
    return student


def cell_name(source: str) -> str:
    """A cell's first line that does the work: not a comment, nor the ``checks.require`` guard many cells open with."""
    lines = [line for line in source.strip().splitlines() if line.strip()]
    work = [line for line in lines if not line.startswith(("#", "checks.require("))]
    return (work or lines)[0][:60]


def cell_seconds(notebook) -> list[tuple[str, float]]:
    """(first line, seconds) of every executed code cell, from the kernel's own timestamps."""
    out = []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "shell.execute_reply" in timing:
            start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            out.append((cell_name(cell.source), (end - start).total_seconds()))
    return out


def execute(notebook, model: str, pairs: str = "") -> list[tuple[str, float]]:
    os.environ.update(LAB7_MODEL=model, LAB7_PAIRS=pairs, HF_HUB_OFFLINE="1", MPLBACKEND="agg")
    notebook.cells = [c for c in notebook.cells if "colab" not in c.metadata.get("tags", [])]
    with tempfile.TemporaryDirectory() as folder:
        NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": folder}}).execute()
    return cell_seconds(notebook)


def write_lab6_sized(path: Path) -> str:
    """Every 6th line of the bundled sample (21 of its 121 pairs) into ``path``; returns the path."""
    from lab7_helpers import BUNDLED_PAIRS

    lines = [line for line in BUNDLED_PAIRS.read_text().splitlines() if line.strip()]
    path.write_text("\n".join(lines[::6]) + "\n")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--solution-only", action="store_true",
                        help="time the solution notebook alone (half the wait)")
    parser.add_argument("--pairs", default="", metavar="FILE",
                        help="a preference file (a Lab 6 export) instead of the bundled sample")
    parser.add_argument("--lab6-sized", action="store_true",
                        help="every 6th pair of the bundled sample (21 pairs), the size of a student's Lab 6 file")
    args = parser.parse_args()
    if args.lab6_sized:
        args.pairs = write_lab6_sized(Path(tempfile.mkdtemp()) / "lab6_sized_21.jsonl")
    pairs = str(Path(args.pairs).resolve()) if args.pairs else ""
    data = Path(args.pairs).name if args.pairs else "the sample"
    rate_before = matmul_gflops()
    solution = execute(build("solution"), args.model, pairs)
    rows = [{"cell": name, "solution s": seconds} for name, seconds in solution]
    total = {"solution s": sum(s for _, s in solution)}
    if not args.solution_only:
        student = execute(finished_student_notebook(), args.model, pairs)
        for row, (_, seconds) in zip(rows, student):
            row.update({"student s": seconds,
                        "student / solution": seconds / row["solution s"] if row["solution s"] > 0.05 else None})
        total["student s"] = sum(s for _, s in student)
    rate_after = matmul_gflops()
    heavy = sorted(rows, key=lambda r: -r["solution s"])[:10]
    print_table(heavy, f"Heaviest cells ({args.model}, {data}; all cells: benchmarks/results/)")
    print("\nwhole notebook: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in total.items())
          + f" (target {TARGET_SECONDS} s); fp32 matmul {rate_before:.0f} GFLOP/s before, {rate_after:.0f} after")
    name = "notebook" + (f"_{Path(args.pairs).stem}" if args.pairs else "")
    save_result(name, {"model": args.model, "pairs": data, "cells": rows, **total, "target_s": TARGET_SECONDS,
                       "matmul_gflops": [rate_before, rate_after]})


if __name__ == "__main__":
    main()
