"""The whole main job (`lab7 run`) vs a faithful re-creation of the original notebook's approach
(original_approach.py), on the same model, data and settings. Each runs in its own child process, one after
the other, from this one script; wall time and peak RSS of each child are measured here (the peak as the kernel
records it, like /usr/bin/time: polling would take CPU from the job on a 2-core machine).

    python benchmarks/bench_main_job.py                   # smollm2-135m, the first 48 bundled pairs
    python benchmarks/bench_main_job.py --smoke           # tiny-gpt2, 12 pairs, 2 KL steps, 8 new tokens
    python benchmarks/bench_main_job.py --rounds 3        # 3 rounds, alternating which job goes first

Each round prints its own ratios (the targets hold in every round, or they do not hold), then the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_result  # noqa: E402

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> dict:
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage, peak RSS included
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{log.read().decode()[-3000:]}")
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20}  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=48, help="how many bundled pairs to use")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each job once per round, alternating order")
    args = parser.parse_args()
    import lab7_helpers as lab

    model = "tiny-gpt2" if args.smoke else args.model
    n_pairs = 12 if args.smoke else args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        pairs.write_text("".join(lab.BUNDLED_PAIRS.read_text().splitlines(keepends=True)[:n_pairs]))
        extra = ["--kl-steps", "2", "--max-new-tokens", "8"] if args.smoke else []  # both jobs, same settings
        # the original lab's settings (one DPO pass), as the original approach runs them
        commands = {"lab7 run": [sys.executable, "-m", "lab7_helpers.app.cli", "run", "--model", model, "--pairs",
                                 str(pairs), "--out", str(Path(tmp) / "run"), "--original-settings", "--overwrite",
                                 *extra],
                    "original notebook approach": [sys.executable, str(HERE / "original_approach.py"), "--model",
                                                   model, "--pairs", str(pairs), *extra]}
        rows, ratios = [], []
        for round_ in range(1, args.rounds + 1):
            order = list(commands) if round_ % 2 else list(reversed(commands))
            runs = {job: timed(commands[job]) for job in order}
            rows += [{"round": round_, "job": job, **runs[job]} for job in commands]
            ours, original = runs["lab7 run"], runs["original notebook approach"]
            ratios.append({"round": round_, "wall time (target <= 35%)": 100 * ours["seconds"] / original["seconds"],
                           "peak RSS (target <= 50%)": 100 * ours["peak_rss_gb"] / original["peak_rss_gb"]})
    print_table(rows, f"Main job on {model}, {n_pairs} pairs")
    print_table([{k: v if k == "round" else f"{v:.1f}%" for k, v in r.items()} for r in ratios],
                "lab7 run as a share of the original, per round")
    medians = {key: statistics.median(r[key] for r in ratios) for key in ratios[0] if key != "round"}
    print_table([{k: f"{v:.1f}%" for k, v in medians.items()}], f"Medians of {args.rounds} round(s)")
    if not args.smoke:
        save_result("main_job", {"model": model, "pairs": n_pairs, "rows": rows, "ratios_percent": medians,
                                 "ratios_percent_per_round": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
