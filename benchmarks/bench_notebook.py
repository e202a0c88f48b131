"""The student's clock: execute the solution notebook and the student notebook (its TODO cells filled with the
solution's code, as a student who finished them would have) and time every cell.

    python benchmarks/bench_notebook.py                      # smollm2-135m, the sample data
    python benchmarks/bench_notebook.py --model tiny-gpt2    # seconds: checks the script runs
    python benchmarks/bench_notebook.py --solution-only      # the solution notebook only

Prints the heavy cells side by side (solution, student, ratio) and the totals, and writes
benchmarks/results/notebook.json. Colab-only cells are skipped, as in the tests.
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
from common import print_table, save_result  # noqa: E402

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


def execute(notebook, model: str) -> list[tuple[str, float]]:
    os.environ.update(LAB7_MODEL=model, HF_HUB_OFFLINE="1", MPLBACKEND="agg")
    notebook.cells = [c for c in notebook.cells if "colab" not in c.metadata.get("tags", [])]
    with tempfile.TemporaryDirectory() as folder:
        NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": folder}}).execute()
    return cell_seconds(notebook)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--solution-only", action="store_true",
                        help="time the solution notebook alone (half the wait)")
    args = parser.parse_args()
    solution = execute(build("solution"), args.model)
    heaviest = sorted(solution, key=lambda cell: -cell[1])[:12]
    print_table([{"cell": name, "solution s": seconds} for name, seconds in heaviest],
                f"Heaviest cells of the solution notebook ({args.model}); total {sum(s for _, s in solution):.0f} s")
    if args.solution_only:
        return
    student = execute(finished_student_notebook(), args.model)
    rows = [{"cell": name, "solution s": a, "student s": b, "student / solution": b / a if a > 0.05 else None}
            for (name, a), (_, b) in zip(solution, student)]
    heavy = sorted(rows, key=lambda r: -r["solution s"])[:10]
    print_table(heavy, f"Heaviest cells ({args.model}; all cells: benchmarks/results/notebook.json)")
    total = {"solution s": sum(s for _, s in solution), "student s": sum(s for _, s in student)}
    print(f"\nwhole notebook: solution {total['solution s']:.0f} s, student {total['student s']:.0f} s "
          f"(target {TARGET_SECONDS} s)")
    save_result("notebook", {"model": args.model, "cells": rows, **total, "target_s": TARGET_SECONDS})


if __name__ == "__main__":
    main()
