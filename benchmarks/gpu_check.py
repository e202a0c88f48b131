"""The GPU path, checked in one command (about 2 minutes on one GPU; no network, no Hub):

    python benchmarks/gpu_check.py            # writes benchmarks/results/gpu_check.json

On GPT-2-sized random weights (``GPT2Config()``, 124M parameters, GPT-2's real tokenizer), for fp16 with a
GradScaler (as on a free Colab T4; forced with LAB7_PRECISION even where bf16 works) and for bf16:
- our DPO against TRL's ``DPOTrainer``, one batch of all pairs a step for two epochs (so both see the same pairs):
  step-1 loss log 2, the step-2 loss within what the precision allows (skipped with a note without TRL);
- speed, warm (after warm-up steps) and in this one process, peak GPU memory reset before each: ``train_dpo`` and
  TRL's ``DPOTrainer`` at batch 1 and 8 (pairs/s), and ``train_kl`` (tokens/s: the prompt and response tokens of
  its batches, padding left out, per second of its timed steps);
- the notebook's evaluation: every figure finite where the lab defines one (``finite_where_defined``).
Exits 1 if a check fails, 2 without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

TOLERANCE = {"fp16": 2e-3, "bf16": 2e-2}  # on the DPO loss: float32 agrees to 1e-5, half precision to about this
KL_WARMUP_STEPS, KL_TIMED_STEPS, KL_BATCH = 4, 40, 4


def finite_where_defined(metrics: pd.DataFrame) -> list[str]:
    """``model.figure`` for each figure of ``evaluate_models``'s table that is not finite where the lab defines
    one. Undefined by design: distinct-n's interval (``_low``/``_high``), and a rate over an empty group (say,
    ``pref_acc_chosen_longer`` when no held-out chosen answer is the longer one), with its interval."""
    bad = []
    for model, row in metrics.iterrows():
        for column, value in row.items():
            figure = column.removesuffix("_low").removesuffix("_high")
            by_design = (figure.startswith("distinct_") and figure != column) or (
                figure.startswith("pref_acc_chosen_") and pd.isna(row[figure]))
            if not by_design and not math.isfinite(value):
                bad.append(f"{model}.{column}")
    return bad


def gpt2_sized(device: str):
    """GPT-2 (124M) with random weights and GPT-2's tokenizer, as ``load_model`` would give it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import lab7_helpers as lab
    from lab7_helpers.models import GPT2_TOKENIZER_DIR, disable_dropout

    torch.manual_seed(0)
    model = disable_dropout(GPT2LMHeadModel(GPT2Config())).to(device)
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR)
    tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    return lab.freeze(model), tokenizer


def timed(work) -> tuple[object, float, float]:
    """``(result, seconds, peak GPU memory in GB)`` of ``work()``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = work()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def check_precision(precision: str, ref, tokenizer, pairs) -> dict:
    import lab7_helpers as lab

    os.environ["LAB7_PRECISION"] = precision
    out: dict = {"precision": precision}
    # One batch of all pairs a step, two epochs: both trainers see the same pairs at step 2, after one update.
    same = dict(batch_size=len(pairs[:16]), epochs=2, lr=1e-5)
    ours = lab.train_dpo(lab.trainable_copy(ref), ref, tokenizer, pairs[:16], progress=False, **same)
    out["dpo_loss_step1"] = ours["loss"].iloc[0]
    out["dpo_step1_is_log2"] = abs(ours["loss"].iloc[0] - math.log(2)) < 1e-6
    try:
        trl = lab.train_dpo_trl(lab.trainable_copy(ref), ref, tokenizer, pairs[:16], **same)
        out["loss_difference_step2"] = abs(trl["loss"].iloc[1] - ours["loss"].iloc[1])
        out["agrees_with_trl"] = out["loss_difference_step2"] < TOLERANCE[precision]
        trainers = {"ours": lambda **a: lab.train_dpo(progress=False, **a), "TRL": lab.train_dpo_trl}
    except ImportError as err:
        out["trl"] = f"skipped: {err}"
        trainers = {"ours": lambda **a: lab.train_dpo(progress=False, **a)}
    for batch_size in (1, 8):  # warm: the runs above compiled and planned; each trainer once more to warm its shapes
        for name, train in trainers.items():
            args = dict(ref=ref, tokenizer=tokenizer, pairs=pairs, batch_size=batch_size)
            train(policy=lab.trainable_copy(ref), **{**args, "pairs": pairs[:batch_size * 2]})
            _, seconds, peak = timed(lambda: train(policy=lab.trainable_copy(ref), **args))
            out[f"dpo_{name}_batch{batch_size}_pairs_per_s"] = len(pairs) / seconds
            out[f"dpo_{name}_batch{batch_size}_peak_gb"] = peak
        if "TRL" in trainers:
            out[f"dpo_ours_not_slower_batch{batch_size}"] = (out[f"dpo_ours_batch{batch_size}_pairs_per_s"]
                                                             >= out[f"dpo_TRL_batch{batch_size}_pairs_per_s"])

    policy = lab.trainable_copy(ref)
    lab.train_kl(policy, ref, tokenizer, pairs, steps=KL_WARMUP_STEPS, batch_size=KL_BATCH, progress=False)
    schedule = lab.training.batches(len(pairs), KL_BATCH, KL_TIMED_STEPS, seed=1)
    tokens = sum(len(lab.encode_pair(tokenizer, pairs[i]["prompt"], pairs[i]["chosen"])["input_ids"])
                 for idx in schedule for i in idx)
    kl, seconds, peak = timed(lambda: lab.train_kl(policy, ref, tokenizer, pairs, steps=KL_TIMED_STEPS,
                                                   batch_size=KL_BATCH, seed=1, progress=False))
    out["kl_tokens_per_s"] = tokens / seconds
    out["kl_tokens_per_s_means"] = (f"{tokens} prompt and response tokens (no padding) of {KL_TIMED_STEPS} steps "
                                    f"at batch {KL_BATCH}, after {KL_WARMUP_STEPS} warm-up steps, / {seconds:.2f} s")
    out["kl_peak_gb"] = peak
    out["kl_finite"] = bool(kl.notna().all().all())
    metrics, generations = lab.evaluate_models({"base": ref, "kl": policy}, ref, tokenizer, pairs[:8],
                                               max_new_tokens=20, progress=False)
    out["not_finite"] = finite_where_defined(metrics)
    out["evaluation_finite"] = not out["not_finite"]
    out["generations"] = int(generations.shape[0])
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run it on a GPU machine.")
        return 2
    warnings.simplefilter("ignore")
    import lab7_helpers as lab
    from lab7_helpers.app.cli import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    ref, tokenizer = gpt2_sized("cuda")
    pairs = lab.split_pairs(lab.load_pairs(lab.BUNDLED_PAIRS))[0][:48]
    results = [check_precision(p, ref, tokenizer, pairs) for p in ("fp16", "bf16")]
    for row in results:
        print(json.dumps(row, default=float))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps({"machine": machine(), "seconds": time.perf_counter() - started,
                                                        "results": results}, indent=2, default=float) + "\n")
    failed = [f"{r['precision']}: {k}" for r in results for k, v in r.items() if v is False]
    print(f"gpu_check: {'all checks passed' if not failed else f'FAILED {failed}'} "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
