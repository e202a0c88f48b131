"""DPO training: the lab's train_dpo vs TRL's DPOTrainer (lab settings, TRL defaults otherwise), side by side.

    python benchmarks/bench_dpo.py                 # smollm2-135m, 48 pairs at batch 1 and at batch 8
    python benchmarks/bench_dpo.py --smoke         # tiny-gpt2, a few pairs, in this process (the test suite)

Prints pairs/s, peak memory, first-step losses (they must agree to 1e-5) and hardware efficiency: training
FLOP/s (6 x params x tokens for the policy, 2 x params x tokens for the reference) as a share of this machine's
fp32 matmul rate, measured in the same run.

TRL runs through the lab's ``train_dpo_trl``, which keeps freed memory in the process as ``train_dpo`` does
(``lab7_helpers/engine/memory.py``), so the headline ratio compares the training loops alone. At batch 1 a third row
runs TRL with glibc's default allocator behaviour: what TRL does outside the lab.

Each row runs ``--rounds`` times (default 2; the second round in reverse order) and its fastest run counts: this
machine's speed drifts by 10-15% within minutes, which a single run per row turned into ratio swings.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_gflops, print_table, save_result  # noqa: E402

import lab7_helpers as lab  # noqa: E402
from lab7_helpers.app.cli import quiet_libraries  # noqa: E402


def tokens_per_pair(tokenizer, pairs) -> float:
    """Mean non-padding tokens of chosen + rejected sequences (prompt included) per pair."""
    batch = lab.encode_pairs_for_dpo(tokenizer, pairs)
    return batch["attention_mask"].sum().item() / len(pairs)


OURS, TRL, TRL_AS_SHIPPED = "lab7 train_dpo", "TRL DPOTrainer", "TRL, default allocator"


def measure(trainer: str, model_name: str, n_pairs: int, batch_size: int) -> dict:
    """On a CPU, runs in a fresh child process, so that peak memory is this trainer's alone (model loading
    included); in smoke mode, and on a GPU (whose peak memory can be reset), in the script's own process."""
    import resource

    import torch

    quiet_libraries()
    warnings.simplefilter("ignore")
    base, tokenizer = lab.load_model(model_name)
    ref = lab.freeze(base)
    policy = lab.trainable_copy(ref)
    pairs = lab.split_pairs(lab.load_pairs(lab.BUNDLED_PAIRS))[0][:n_pairs]
    engine = os.environ.get("LAB7_ENGINE")
    if trainer == TRL_AS_SHIPPED:
        os.environ["LAB7_ENGINE"] = "0"  # no engine, so no freed-memory reuse either
    train = partial(lab.train_dpo, progress=False) if trainer == OURS else lab.train_dpo_trl
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        history = train(policy, ref, tokenizer, pairs, batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:  # the next row, in smoke mode in this same process, runs as it would in a fresh one
        if engine is None:
            os.environ.pop("LAB7_ENGINE", None)
        else:
            os.environ["LAB7_ENGINE"] = engine
    n_params = sum(p.numel() for p in ref.parameters())
    flops = 8 * n_params * tokens_per_pair(tokenizer, pairs) * len(pairs)  # 6PT policy, 2PT reference
    return {"trainer": trainer, "batch": batch_size, "pairs": len(pairs), "seconds": seconds,
            "pairs_per_s": len(pairs) / seconds, "peak_rss_gb": torch.cuda.max_memory_allocated() / 2**30
            if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "first_loss": float(history["loss"].iloc[0]), "gflops": flops / seconds / 1e9,
            "params_m": n_params / 1e6}


def fastest(runs: list[dict]) -> dict:
    """The fastest of a row's runs, with the highest peak memory of them all (a quiet moment may flatter speed,
    never memory)."""
    best = min(runs, key=lambda run: run["seconds"])
    return {**best, "peak_rss_gb": max(run["peak_rss_gb"] for run in runs), "runs": len(runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny-gpt2, 2 pairs at batch 1 and 8 at batch 8, every row in this process: checks "
                        "the script runs")
    parser.add_argument("--pairs-b1", type=int, default=48)
    parser.add_argument("--pairs-b8", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each row, in alternating order; the fastest counts (this machine's speed drifts)")
    args = parser.parse_args()
    quiet_libraries()
    warnings.simplefilter("ignore")
    model_name = "tiny-gpt2" if args.smoke else args.model
    sizes = {1: 2, 8: 8} if args.smoke else {1: args.pairs_b1, 8: args.pairs_b8}

    peak = matmul_gflops(seconds=0.5 if args.smoke else 3.0)
    plan = [(trainer, batch_size) for batch_size in sizes
            for trainer in ((OURS, TRL, TRL_AS_SHIPPED) if batch_size == 1 else (OURS, TRL))]
    runs: dict[tuple[str, int], list[dict]] = {key: [] for key in plan}
    import torch

    if args.smoke or torch.cuda.is_available():  # in this process: a child spends 10-15 s importing CUDA and TRL
        for round_ in range(args.rounds if not args.smoke else 1):
            for trainer, batch_size in plan if round_ % 2 == 0 else plan[::-1]:
                runs[trainer, batch_size].append(measure(trainer, model_name, sizes[batch_size], batch_size))
    else:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            for round_ in range(args.rounds):
                for trainer, batch_size in plan if round_ % 2 == 0 else plan[::-1]:
                    runs[trainer, batch_size].append(pool.submit(measure, trainer, model_name, sizes[batch_size],
                                                                 batch_size).result())
    rows = [fastest(runs[key]) for key in plan]
    peak_after = matmul_gflops(seconds=0.5 if args.smoke else 3.0)
    for row in rows:  # against the higher of the two readings, so that a busy moment cannot flatter us
        row["matmul_share"] = row["gflops"] / max(peak, peak_after)

    print(f"model {model_name} ({rows[0]['params_m']:.1f}M parameters); fp32 matmul peak {peak:.0f} GFLOP/s "
          f"(before) / {peak_after:.0f} (after); "
          f"{'each run in its own process' if not (args.smoke or torch.cuda.is_available()) else 'all runs in this process'}"
          f" (peak memory: {'GPU' if torch.cuda.is_available() else 'RSS'}), the fastest of "
          f"{rows[0]['runs']} per row")
    print_table(rows, "DPO training")
    ratios = []
    for batch_size in sizes:
        own, theirs, *shipped = [r for r in rows if r["batch"] == batch_size]
        ratios.append({"batch": batch_size, "speedup (pairs/s)": own["pairs_per_s"] / theirs["pairs_per_s"],
                       "vs TRL, default allocator": own["pairs_per_s"] / shipped[0]["pairs_per_s"] if shipped
                       else None,  # not run at this batch size (None: valid JSON, unlike nan)
                       "peak-memory ratio": own["peak_rss_gb"] / theirs["peak_rss_gb"],
                       "|first-loss diff|": abs(own["first_loss"] - theirs["first_loss"]),
                       "ours % of matmul peak": 100 * own["matmul_share"],
                       "TRL % of matmul peak": 100 * theirs["matmul_share"]})
    print_table(ratios, "lab7 vs TRL (targets: speedup >= 2 at batch 1; ours >= 50% of peak; |diff| < 1e-5)")
    if not args.smoke:
        save_result("dpo", {"model": model_name, "matmul_gflops": [peak, peak_after], "rows": rows,
                            "ratios": ratios})
    return 0 if all(r["|first-loss diff|"] < 1e-5 for r in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
