import pytest
import torch
import torch.nn.functional as F

from lab7_helpers import trainable_copy
from lab7_helpers.engine.onednn import OneDNNLinear, has_onednn_linear, onednn_linears

needs_onednn = pytest.mark.skipif(not has_onednn_linear(), reason="this torch has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("transposed_weight", [False, True])
def test_onednn_linear_matches_f_linear_values_and_gradients(transposed_weight):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 24, generator=generator, requires_grad=True)
    stored = torch.randn(24, 40, generator=generator) if transposed_weight else torch.randn(40, 24, generator=generator)
    stored.requires_grad_()
    bias = torch.randn(40, generator=generator, requires_grad=True)
    upstream = torch.randn(2, 7, 40, generator=generator)
    results = []
    for linear in (F.linear, OneDNNLinear.apply):
        weight = stored.t() if transposed_weight else stored  # [out, in]; a view when stored as [in, out]
        out = linear(x, weight, bias)
        grads = torch.autograd.grad((out * upstream).sum(), (x, stored, bias))
        results.append((out, *grads))
    for plain, onednn in zip(*results):
        assert plain.shape == onednn.shape
        assert torch.allclose(onednn, plain, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_linears_give_the_plain_logits_and_gradients_and_leave_no_patch(tiny, tokenizer, pairs, tiny_llama):
    batch = tokenizer([p["prompt"] + p["chosen"] for p in pairs], return_tensors="pt", padding=True,
                      return_token_type_ids=False)
    # GPT-2's Conv1D layers; Llama's Linear layers and grouped-query attention
    for model in (trainable_copy(tiny[0]), tiny_llama(tie_word_embeddings=True)):
        runs = []
        for use_onednn in (False, True):
            model.zero_grad(set_to_none=True)
            if use_onednn:
                with onednn_linears(model):
                    linears = [m for m in model.modules() if type(m).__name__ in ("Linear", "Conv1D")]
                    assert linears and all("forward" in m.__dict__ for m in linears)
                    logits = model(**batch).logits
            else:
                logits = model(**batch).logits
            torch.logsumexp(logits, dim=-1).sum().backward()
            runs.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
        (plain_logits, plain_grads), (onednn_logits, onednn_grads) = runs
        assert torch.allclose(onednn_logits, plain_logits, rtol=1e-4, atol=1e-5)
        for plain, onednn in zip(plain_grads, onednn_grads):
            assert torch.allclose(onednn, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
        assert not any("forward" in m.__dict__ for m in model.modules())


def test_onednn_linears_leave_other_models_alone(tiny_llama):
    # oneDNN's linear is for float32 here: a float64 model keeps its layers
    model = tiny_llama(tie_word_embeddings=True).double()
    with onednn_linears(model):
        assert not any("forward" in m.__dict__ for m in model.modules())
