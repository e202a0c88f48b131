import torch

from lab7_helpers import format_prompt, generate

PROMPTS = ["Say hello.", "What is the capital of France? Answer in one word, please.", "Why?"]


def test_same_seed_same_text_other_seed_other_text(tiny, tokenizer):
    model = tiny[0]
    first = generate(model, tokenizer, PROMPTS, max_new_tokens=12, seed=3)
    assert first == generate(model, tokenizer, PROMPTS, max_new_tokens=12, seed=3)
    assert first != generate(model, tokenizer, PROMPTS, max_new_tokens=12, seed=4)
    assert len(first) == len(PROMPTS) and all(isinstance(t, str) for t in first)


def test_batched_greedy_equals_one_at_a_time_and_returns_only_new_tokens(tiny, tokenizer):
    model = tiny[0]
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=0)
    for prompt, text in zip(PROMPTS, batched):
        ids = tokenizer(format_prompt(prompt), return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert text == new_text
        assert "Question:" not in text and prompt not in text


def test_restores_padding_side_and_training_mode(tiny, tokenizer, policy):
    tokenizer.padding_side = "right"
    policy.train()
    generate(policy, tokenizer, PROMPTS[:1], max_new_tokens=2)
    assert tokenizer.padding_side == "right" and policy.training
    assert torch.is_grad_enabled()
