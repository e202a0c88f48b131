"""How far DPO moves a model on a Lab-6-sized file, pass by pass: the measurements behind ``scaled_dpo_epochs``.

    python benchmarks/small_data_passes.py                    # smollm2-135m, 18 pairs of the sample
    python benchmarks/small_data_passes.py --passes 1 2 --smoke   # tiny-gpt2, a quick check of the script

The file: every 7th pair of the bundled sample (18 pairs, 18 distinct prompts), split as ``lab7 run`` splits it
(14 training, 4 held out). For each number of passes, a fresh copy of the model trains with ``train_dpo`` (the lab's
settings: beta 0.1, lr 5e-6, batch 1), and is evaluated on the file's 4 held-out pairs and on the sample's other
held-out pairs (those whose prompt is not a training prompt), with 95% intervals. Runs with more passes start with
the same steps as runs with fewer (the schedule is one seeded sequence), so each row extends the one above it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, print_table  # noqa: E402

import pandas as pd  # noqa: E402

import lab7_helpers as lab  # noqa: E402

BETA, LR, SEED = 0.1, 5e-6, 0
SHOWN = ["pref_acc", "reward_acc", "reward_margin", "kl_to_ref", "chosen_logp_vs_ref", "rejected_logp_vs_ref",
         "trigram_repetition", "distinct_2", "len_words"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=lab.SMOLLM2)
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--smoke", action="store_true", help="tiny-gpt2 and 8 new tokens: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.max_new_tokens = lab.TINY_GPT2, 8

    pairs = lab.load_pairs(lab.BUNDLED_PAIRS)[::7]
    train, held_out = lab.split_pairs(pairs, test_fraction=0.2, seed=SEED)
    sample_held_out = lab.sample_held_out_pairs(train)
    base, tokenizer = lab.load_model(args.model)
    ref = lab.freeze(base)
    print(f"{args.model}: {len(pairs)} pairs, {len(train)} training, {len(held_out)} held out; "
          f"{len(sample_held_out)} more held-out pairs from the sample")

    rows, started = [], time.perf_counter()
    for passes in [0, *args.passes]:
        policy = lab.trainable_copy(ref)
        loss = None  # no training, no loss
        if passes:
            history = lab.train_dpo(policy, ref, tokenizer, train, beta=BETA, lr=LR, epochs=passes, seed=SEED,
                                    progress=False)
            loss = history["loss"].iloc[-len(train):].mean()  # the last pass
        for name, evaluated in (("file", held_out), ("sample", sample_held_out)):
            metrics, generations = lab.evaluate_models({"dpo": policy}, ref, tokenizer, evaluated, beta=BETA,
                                                       max_new_tokens=args.max_new_tokens, progress=False)
            row = metrics.iloc[0]
            rows.append({"passes": passes, "steps": passes * len(train), "held_out": f"{name} ({len(evaluated)})",
                         "last_pass_loss": loss, **{k: row[k] for k in metrics.columns},
                         "example": generations["dpo"].iloc[0]})
        numbers = pd.DataFrame([{k: v for k, v in r.items() if k not in ("held_out", "example")} for r in rows[-2:]])
        shown = lab.with_intervals(numbers)[SHOWN]
        shown.index = [f"{passes} passes, {r['held_out']}" for r in rows[-2:]]
        print(f"\nafter {passes} pass(es) ({passes * len(train)} steps), last pass's mean loss "
              f"{'-' if loss is None else f'{loss:.3f}'}, "
              f"{time.perf_counter() - started:.0f} s so far")
        print(shown.to_string())
        print(f"  example ({held_out[0]['prompt'][:50]!r}): {rows[-2]['example'][:160]!r}")
        del policy

    print_table([{k: r[k] for k in ("passes", "steps", "held_out", "last_pass_loss", "kl_to_ref", "reward_margin",
                                    "chosen_logp_vs_ref", "rejected_logp_vs_ref", "pref_acc", "trigram_repetition")}
                 for r in rows], "DPO passes on a Lab-6-sized file")
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "small_data_passes.json").write_text(json.dumps(
            {"machine": machine(), "model": args.model, "rows": [json_safe(r) for r in rows]}, indent=1,
            allow_nan=False) + "\n")
    return 0


def json_safe(row: dict) -> dict:
    """NaN (a rate over no pairs, distinct-n's missing interval) as null; numpy numbers as floats."""
    return {k: v if isinstance(v, str) or v is None else (None if math.isnan(float(v)) else float(v))
            for k, v in row.items()}


if __name__ == "__main__":
    sys.exit(main())
