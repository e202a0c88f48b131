"""The GPU path, checked in one command (about 5 minutes on one GPU; no network, no Hub):

    python benchmarks/gpu_check.py            # writes benchmarks/results/gpu_check.json

On GPT-2-sized random weights (``GPT2Config()``, 124M parameters, GPT-2's real tokenizer), for fp16 with a
GradScaler (as on a free Colab T4; forced with LAB7_PRECISION even where bf16 works) and for bf16:
- our DPO against TRL's ``DPOTrainer``, one batch of all pairs a step for two epochs (so both see the same pairs):
  step-1 loss log 2 (the reference is scored under the same autocast as the policy), the step-2 loss within
  what the precision allows; skipped with a note where TRL is not installed (carry its wheels);
- the notebook's main cells: the KL update, DPO, the evaluation and generation, each finite;
- training tokens/s and the share of the GPU's measured half-precision matmul rate (6 x params x tokens).
Exits 1 if a check fails.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

TOLERANCE = {"fp16": 2e-3, "bf16": 2e-2}  # on the DPO loss: float32 agrees to 1e-5, half precision to about this


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


def half_matmul_tflops(dtype: torch.dtype, n: int = 8192, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def check_precision(precision: str, ref, tokenizer, pairs) -> dict:
    import lab7_helpers as lab

    os.environ["LAB7_PRECISION"] = precision
    out: dict = {"precision": precision}
    # One batch of all pairs a step, two epochs: both trainers see the same pairs at step 2, after one update,
    # whatever order their samplers draw (the batch mean does not depend on it).
    same = dict(batch_size=len(pairs), epochs=2, lr=1e-5)
    ours = lab.train_dpo(lab.trainable_copy(ref), ref, tokenizer, pairs, progress=False, **same)
    out["dpo_loss_step1"] = ours["loss"].iloc[0]
    out["dpo_step1_is_log2"] = abs(ours["loss"].iloc[0] - math.log(2)) < 1e-6
    try:
        trl = lab.train_dpo_trl(lab.trainable_copy(ref), ref, tokenizer, pairs, **same)
        for column in ("loss", "rewards/margins"):
            out[f"{column} step 2 (ours, TRL)"] = (ours[column].iloc[1], trl[column].iloc[1])
        out["loss_difference_step2"] = abs(trl["loss"].iloc[1] - ours["loss"].iloc[1])
        out["agrees_with_trl"] = out["loss_difference_step2"] < TOLERANCE[precision]
    except ImportError as err:
        out["trl"] = f"skipped: {err}"

    policy = lab.trainable_copy(ref)
    tokens = sum(len(lab.encode_pair(tokenizer, p["prompt"], p["chosen"])["input_ids"]) for p in pairs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    kl = lab.train_kl(policy, ref, tokenizer, pairs, steps=len(pairs) // 4, batch_size=4, progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in policy.parameters())
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    out["kl_tokens_per_s"] = tokens / seconds
    out["share_of_matmul_peak"] = 6 * params * tokens / seconds / (half_matmul_tflops(dtype) * 1e12)
    out["kl_finite"] = bool(kl.notna().all().all())
    metrics, generations = lab.evaluate_models({"base": ref, "kl": policy}, ref, tokenizer, pairs[:8],
                                               max_new_tokens=20, progress=False)
    out["evaluation_finite"] = bool(metrics.drop(columns=[c for c in metrics if "chosen_" in c]).notna().all().all())
    out["generations"] = int(generations.shape[0])
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run it on a GPU machine.")
        return 2
    warnings.simplefilter("ignore")
    import lab7_helpers as lab

    ref, tokenizer = gpt2_sized("cuda")
    pairs = lab.split_pairs(lab.load_pairs(lab.BUNDLED_PAIRS))[0][:32]
    results = [check_precision(p, ref, tokenizer, pairs) for p in ("fp16", "bf16")]
    for row in results:
        print(json.dumps(row, default=float))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2,
                                                       default=float) + "\n")
    failed = [f"{r['precision']}: {k}" for r in results for k, v in r.items() if v is False]
    print("gpu_check: all checks passed" if not failed else f"gpu_check: FAILED {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
