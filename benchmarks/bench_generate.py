"""Batched generate() vs one prompt at a time (the original lab's loop), same prompts, settings and model.

A third row shows what the pre-packed oneDNN weights (``prepacked_weights``) add on CPU: batched, plain layers.

    python benchmarks/bench_generate.py            # smollm2-135m, the 24 held-out prompts, 80 new tokens
    python benchmarks/bench_generate.py --smoke    # tiny-gpt2, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_result  # noqa: E402

import lab7_helpers as lab  # noqa: E402
from lab7_helpers.app.cli import quiet_libraries  # noqa: E402
import lab7_helpers.engine.onednn as onednn  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    warnings.simplefilter("ignore")
    model, tokenizer = lab.load_model("tiny-gpt2" if args.smoke else args.model)
    _, test_pairs = lab.split_pairs(lab.load_pairs(lab.BUNDLED_PAIRS))
    prompts = [p["prompt"] for p in test_pairs][: 4 if args.smoke else None]
    new_tokens = 8 if args.smoke else 80
    rows = []
    has_onednn = onednn.has_onednn_linear
    try:
        for name, batch_size, packed in (("one at a time", 1, True), ("batched", len(prompts), True),
                                         ("batched, plain layers", len(prompts), False)):
            onednn.has_onednn_linear = has_onednn if packed else (lambda: False)
            start = time.perf_counter()
            texts = lab.generate(model, tokenizer, prompts, max_new_tokens=new_tokens, batch_size=batch_size)
            seconds = time.perf_counter() - start
            rows.append({"loop": name, "prompts": len(prompts), "seconds": seconds,
                         "prompts_per_s": len(prompts) / seconds, "words": sum(len(t.split()) for t in texts)})
    finally:  # the plain layers were this script's switch only
        onednn.has_onednn_linear = has_onednn
    print_table(rows, f"Generation, {new_tokens} new tokens (target: batched >= 4x one at a time)")
    speedup = rows[1]["prompts_per_s"] / rows[0]["prompts_per_s"]
    packing = rows[1]["prompts_per_s"] / rows[2]["prompts_per_s"]
    print(f"\nspeedup: {speedup:.2f}x (pre-packed weights alone: {packing:.2f}x)")
    if not args.smoke:
        save_result("generate", {"rows": rows, "speedup": speedup, "prepacked_speedup": packing})
    return 0


if __name__ == "__main__":
    sys.exit(main())
