import pytest
import torch

from lab7_helpers import format_prompt, generate
from lab7_helpers.engine.onednn import has_onednn_linear, prepacked_weights

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


@pytest.mark.skipif(not has_onednn_linear(), reason="this torch has no oneDNN linear")
def test_prepacked_weights_give_the_plain_logits_and_leave_no_patch(tiny, tokenizer, tiny_llama):
    llama = tiny_llama().eval()
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True, return_token_type_ids=False)
    for model in (tiny[0], llama):  # GPT-2's Conv1D layers and Llama's Linear layers
        with torch.inference_mode():
            plain = model(**ids).logits
            with prepacked_weights(model, rows=len(PROMPTS)):
                assert any("forward" in m.__dict__ for m in model.modules())
                packed = model(**ids).logits
        assert torch.allclose(packed, plain, rtol=1e-4, atol=1e-5)
        assert not any("forward" in m.__dict__ for m in model.modules())


def test_nucleus_sampler_draws_from_hugging_faces_top_p_distribution():
    """Same support and probabilities as transformers' temperature + top-p warpers, one draw per row."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from lab7_helpers.generation import NucleusSampler

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0] + [-20.0] * 300,
                           torch.linspace(0.5, 0.0, 306).tolist()])  # peaked; nearly flat (nucleus > 256 tokens)
    warped = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.8)(None, logits.clone()))
    expected = torch.softmax(warped, dim=-1)
    sampler = NucleusSampler(temperature=0.8, top_p=0.9, seed=0, device="cpu")
    counts = torch.zeros_like(logits)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    for _ in range(4000):
        scores = sampler(None, logits)
        assert torch.isfinite(scores).sum(-1).tolist() == [1, 1]  # exactly one token left per row
        counts += torch.isfinite(scores).float()
    assert torch.rand(1) == before  # the global random state is untouched
    assert torch.equal(counts > 0, expected > 0)  # never a token outside the nucleus
    assert torch.allclose(counts[0] / 4000, expected[0], atol=0.03)
    assert (counts[1][expected[1] > 0] > 0).float().mean() > 0.99  # the flat row's nucleus is used throughout
