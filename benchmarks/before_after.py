"""Did a change slow the lab? The student's clock and the DPO loop, before (a git revision) and after (this
checkout), alternating in one run, so that the machine's drift hits both alike.

    python benchmarks/before_after.py --before 9620a4f             # 2 rounds, smollm2-135m
    python benchmarks/before_after.py --before HEAD~3 --rounds 3

Each round runs, in each tree (the order alternating from round to round), in a fresh process:
- ``notebook``: the solution notebook on a Lab-6-sized file (``bench_notebook.py --lab6-sized --solution-only``),
  its cells' seconds summed;
- ``dpo``: ``train_dpo`` at batch 1 on 48 pairs (``bench_dpo.py``'s row for the lab's loop), in pairs/s.
Prints each run's figures, the medians and after/before; writes benchmarks/results/before_after.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops, print_table, save_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
import bench_notebook
pairs = bench_notebook.write_lab6_sized(Path(tempfile.mkdtemp()) / "lab6_sized_21.jsonl")
cells = bench_notebook.execute(bench_notebook.build("solution"), "{model}", pairs)
print("RESULT", json.dumps({{"notebook s": sum(seconds for _, seconds in cells)}}))
"""
DPO = """
import json, sys, warnings
sys.path.insert(0, "benchmarks")
warnings.simplefilter("ignore")
import bench_dpo
row = bench_dpo.measure(bench_dpo.OURS, "{model}", 48, 1)
print("RESULT", json.dumps({{"dpo pairs/s": row["pairs_per_s"], "dpo peak GB": row["peak_rss_gb"]}}))
"""


def run_in(tree: Path, code: str) -> dict:
    """``code`` in a fresh Python whose ``lab7_helpers`` (and notebook kernels') is ``tree``'s."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"in {tree}:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with (a commit, a tag, HEAD~1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=("notebook", "dpo"), default=None, help="one of the two figures")
    args = parser.parse_args()
    jobs = [code.format(model=args.model) for name, code in (("notebook", NOTEBOOK), ("dpo", DPO))
            if args.only in (None, name)]
    with tempfile.TemporaryDirectory(prefix="lab7_before_") as folder:
        before = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), args.before], cwd=ROOT, check=True)
        try:
            trees = {"before": before, "after": ROOT}
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            rates = [matmul_gflops()]
            for round_ in range(args.rounds):
                for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
                    figures = {}
                    for code in jobs:
                        figures.update(run_in(trees[side], code))
                    runs[side].append(figures)
                    print(f"round {round_ + 1}, {side}: {figures}", flush=True)
            rates.append(matmul_gflops())
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    rows = [{"figure": name, **{side: statistics.median(run[name] for run in runs[side]) for side in runs}}
            for name in runs["after"][0]]
    for row in rows:
        row["after / before"] = row["after"] / row["before"]
    print(f"\n{args.rounds} round(s), medians; before = {args.before}; fp32 matmul {rates[0]:.0f} GFLOP/s before, "
          f"{rates[1]:.0f} after")
    print_table(rows, "Before and after (notebook s: lower is better; dpo pairs/s: higher is better)")
    save_result("before_after", {"before": args.before, "model": args.model, "runs": runs, "rows": rows,
                                 "matmul_gflops": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
