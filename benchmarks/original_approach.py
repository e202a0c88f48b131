"""A faithful re-creation of the ORIGINAL Lab 7 notebook's approach, for benchmarking only (do not teach from it).

Five model loads, the KL loop at batch 1 on prompt + "\n" + response with its KL under no_grad (as shipped), the
optimizer kept alive, TRL's DPOTrainer with its defaults (gradient checkpointing included) on prompt + chosen with no
template, then one-prompt-at-a-time generation for the comparison loop and for eval_models.
Only what TRL >= 0.29 rejects (max_prompt_length) is left out; model loading goes through lab.load_model so that
it works offline.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings

import torch
import torch.nn.functional as F


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--kl-steps", type=int, default=30, help="the original's KL loop: 30 steps")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="the original's generation length: 80")
    args = parser.parse_args()
    from lab7_helpers.app.cli import quiet_libraries

    quiet_libraries()
    warnings.simplefilter("ignore")
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    import lab7_helpers as lab

    started = time.perf_counter()
    stamps = {}
    device = "cpu"
    pairs = lab.load_pairs(args.pairs)
    random.seed(0)
    random.shuffle(pairs)
    split = int(0.8 * len(pairs))
    train_pairs, test_pairs = pairs[:split], pairs[split:]

    policy, tokenizer = lab.load_model(args.model, device)
    ref, _ = lab.load_model(args.model, device)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)

    @torch.no_grad()
    def kl_tokenwise(policy_logits, ref_logits):  # the original's bug, kept: no gradient
        p = F.softmax(policy_logits, dim=-1)
        return torch.sum(p * (F.log_softmax(policy_logits, -1) - F.log_softmax(ref_logits, -1)), dim=-1)

    opt = torch.optim.AdamW(policy.parameters(), lr=5e-5)
    policy.train()
    set_seed(0)
    for i in range(min(args.kl_steps, len(train_pairs) * 3)):
        ex = train_pairs[i % len(train_pairs)]
        full = tokenizer(ex["prompt"] + "\n" + ex["chosen"], return_tensors="pt", truncation=True, max_length=256)
        prompt_len = tokenizer(ex["prompt"] + "\n", return_tensors="pt")["input_ids"].shape[1]
        ids, attn = full["input_ids"], full["attention_mask"]
        labels, ids_in, attn_in = ids[:, 1:], ids[:, :-1], attn[:, :-1]
        logits_p = policy(input_ids=ids_in, attention_mask=attn_in).logits
        logits_r = ref(input_ids=ids_in, attention_mask=attn_in).logits
        start = max(prompt_len - 1, 0)
        tok_logp = torch.gather(F.log_softmax(logits_p, -1), -1, labels.unsqueeze(-1)).squeeze(-1)
        nll = -tok_logp[:, start:].mean()
        kl = kl_tokenwise(logits_p, logits_r)[:, start:].mean()
        loss = nll + 0.05 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    stamps["kl"] = time.perf_counter() - started
    policy_kl = policy

    dpo_model, _ = lab.load_model(args.model, device)
    dpo_ref, _ = lab.load_model(args.model, device)
    dpo_ref.eval()
    config = DPOConfig(output_dir="/tmp/lab7_original_dpo_out", per_device_train_batch_size=1,
                       per_device_eval_batch_size=1, learning_rate=5e-6, num_train_epochs=1, max_length=256,
                       logging_steps=10, save_strategy="no", eval_strategy="no", bf16=False,
                       fp16=torch.cuda.is_available(), beta=0.1, report_to="none", disable_tqdm=True)
    trainer = DPOTrainer(model=dpo_model, ref_model=dpo_ref, args=config,
                         train_dataset=Dataset.from_list(train_pairs), eval_dataset=Dataset.from_list(test_pairs),
                         processing_class=tokenizer)
    trainer.train()
    stamps["dpo"] = time.perf_counter() - started

    heldout = [ex["prompt"] for ex in test_pairs[: min(6, len(test_pairs))]]

    def generate(model, prompt, seed):
        model.eval()
        set_seed(seed)
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, max_new_tokens=args.max_new_tokens, temperature=0.8,
                                 top_p=0.95, pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        return text[len(prompt):].strip() if text.startswith(prompt) else text.strip()

    base_model, _ = lab.load_model(args.model, device)
    for seed in (1, 2):  # the comparison loop, then eval_models
        for p in heldout:
            for model in (base_model, policy_kl, dpo_model):
                generate(model, p, seed)
    stamps["generation"] = time.perf_counter() - started
    print("stamps", {k: round(v, 1) for k, v in stamps.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
