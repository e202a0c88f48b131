"""The notebook's KL update, beta sweep and no_grad demo with the reference's transformer run once per batch
(the engine's ``reference.reference_logits``, which keeps its last hidden states) vs run by every training and
measurement (the core's ``scoring.reference_logits``, which the engine is handed), in one process, alternating.
Both must give the same numbers.

    python benchmarks/bench_sweep.py            # smollm2-135m, a Lab-6-sized file (every 6th sample pair: 21)
    python benchmarks/bench_sweep.py --smoke    # tiny-gpt2, 6 pairs, one round: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_notebook import write_lab6_sized  # noqa: E402
from common import matmul_gflops, print_table, save_result  # noqa: E402

import lab7_helpers as lab  # noqa: E402
from lab7_helpers.app.cli import quiet_libraries  # noqa: E402
from lab7_helpers.engine import reference  # noqa: E402

SHARED, ANEW = "reference run once", "reference run each time"


def notebook_cells(ref, tokenizer, train: list[dict], steps: int, demo_steps: int) -> tuple[dict, list]:
    """Seconds of the notebook's three cells (its settings), and what they computed."""
    seconds, start = {}, time.perf_counter()
    policy_kl = lab.trainable_copy(ref)
    history = lab.train_kl(policy_kl, ref, tokenizer, train, beta=0.05, lr=5e-5, steps=steps, progress=False)
    seconds["KL update"], start = time.perf_counter() - start, time.perf_counter()
    sweep = lab.kl_beta_sweep(ref, tokenizer, train, [0.0, 0.05, 1.0], lr=5e-5, steps=steps,
                              trained={0.05: policy_kl}, progress=False)
    seconds["beta sweep"], start = time.perf_counter() - start, time.perf_counter()
    demo = [lab.kl_beta_sweep(ref, tokenizer, train[:4], betas, lr=5e-5, steps=demo_steps, progress=False)
            for betas in ([0.0, 5.0], [5.0])]  # with the gradient, then detached (beta = 0 served by the first)
    seconds["no_grad demo"] = time.perf_counter() - start
    return seconds, [history, sweep, *demo]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating which goes first")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    warnings.simplefilter("ignore")
    ref, tokenizer = lab.load_model("tiny-gpt2" if args.smoke else args.model)
    ref = lab.freeze(ref)
    with tempfile.TemporaryDirectory() as tmp:
        train = lab.split_pairs(lab.load_pairs(write_lab6_sized(Path(tmp) / "lab6.jsonl")))[0]
    steps, demo_steps, rounds = (2, 1, 1) if args.smoke else (30, 4, args.rounds)
    train = train[:6] if args.smoke else train
    peak = matmul_gflops(seconds=0.5 if args.smoke else 3.0)
    twin = reference.reference_logits

    def run_each_time(ref, batches, amp, plain):  # the core's function, as the engine's switched off
        return plain(ref, batches, amp)

    runs: dict[str, list[dict]] = {SHARED: [], ANEW: []}
    results = {}
    try:
        for round_ in range(rounds):
            for mode in (SHARED, ANEW) if round_ % 2 == 0 else (ANEW, SHARED):
                reference._STATES.clear()
                reference.reference_logits = twin if mode == SHARED else run_each_time
                seconds, results[mode] = notebook_cells(ref, tokenizer, train, steps, demo_steps)
                runs[mode].append(seconds)
    finally:
        reference.reference_logits = twin
        reference._STATES.clear()
    same = all(a.equals(b) for a, b in zip(results[SHARED], results[ANEW]))
    rows = [{"cell": cell, **{mode: statistics.median(run[cell] for run in runs[mode]) for mode in runs},
             "ratio": statistics.median(run[cell] for run in runs[SHARED])
             / statistics.median(run[cell] for run in runs[ANEW])} for cell in runs[SHARED][0]]
    print(f"{len(train)} training pairs, {rounds} round(s), medians; fp32 matmul {peak:.0f} GFLOP/s")
    print_table(rows, "Seconds per notebook cell")
    print(f"\nthe same numbers both ways: {same}")
    if not args.smoke:
        save_result("sweep", {"model": args.model, "pairs": len(train), "matmul_gflops": peak, "runs": runs,
                              "rows": rows, "same_numbers": same})
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
