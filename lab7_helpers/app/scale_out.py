"""DPO with TRL on several processes (GPUs, or CPU processes), launched by ``accelerate``:

    accelerate launch --num_processes 4 -m lab7_helpers.app.scale_out --model gpt2 --pairs class_pairs.jsonl \
        --global-batch-size 32 --out history_dpo_trl.csv

Each process trains on ``global-batch-size / num_processes`` pairs per step and the gradients are averaged, so
the losses equal a single-process run with the same global batch (``tests/test_scale_out.py`` checks it on two
CPU processes). The main process writes the per-step history as CSV.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab7_helpers.app.scale_out",
                                     description="DPO with TRL's DPOTrainer on every process accelerate starts.")
    parser.add_argument("--model", default="gpt2", help="tiny-gpt2, smollm2-135m, a local folder or a Hub name")
    parser.add_argument("--pairs", help="pairs file (default: the bundled sample)")
    parser.add_argument("--global-batch-size", type=int, default=8, help="pairs per optimizer step, all processes")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="history_dpo_trl.csv", help="CSV of the per-step history")
    args = parser.parse_args(argv)
    import torch
    from accelerate import PartialState

    from .. import freeze, load_model, split_pairs, train_dpo_trl, trainable_copy
    from ..sources.pair_files import BUNDLED_PAIRS, load_pairs
    from ..outputs import save_csv

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes talk through gloo
    if args.global_batch_size % state.num_processes:
        print(f"--global-batch-size {args.global_batch_size} must be a multiple of the {state.num_processes} "
              "processes.", file=sys.stderr)
        return 2
    base, tokenizer = load_model(args.model, device=str(state.device))
    ref = freeze(base)
    train = split_pairs(load_pairs(args.pairs or BUNDLED_PAIRS), seed=args.seed)[0]
    history = train_dpo_trl(trainable_copy(ref), ref, tokenizer, train, args.beta, args.lr, args.epochs,
                            args.global_batch_size // state.num_processes, args.seed, args.max_length)
    if state.is_main_process:
        save_csv(history, Path(args.out))
        print(f"{len(history)} steps on {state.num_processes} process(es); history in {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
