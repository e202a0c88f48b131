import pytest
import torch

from lab7_helpers.models import OFFLINE_MODELS
from lab7_helpers import freeze, load_model, trainable_copy
from lab7_helpers.engine import weights_on_disk
from lab7_helpers.models import tiny_gpt2
from lab7_helpers.sources.offline_models import cache_dir


def test_tiny_gpt2_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = tiny_gpt2(), tiny_gpt2()
    assert torch.rand(1) == before
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, tiny_gpt2(seed=1).lm_head.weight)


def test_load_model_fixes_pad_token_and_disables_dropout():
    model, tokenizer = load_model("tiny-gpt2", device="cpu")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    assert model.generation_config.pad_token_id == 50256
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert 3_000_000 < sum(p.numel() for p in model.parameters()) < 3_600_000


def test_freeze_and_trainable_copy(tiny):
    base = freeze(load_model("tiny-gpt2", device="cpu")[0])
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    policy = trainable_copy(base)
    assert policy.training and all(p.requires_grad for p in policy.parameters())
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    with torch.no_grad():
        policy.lm_head.weight.add_(1.0)
    assert not torch.equal(policy.lm_head.weight, base.lm_head.weight)


def test_unknown_model_offline_names_the_offline_models():
    with pytest.raises(OSError) as info:
        load_model("no-such-org/no-such-model", device="cpu")
    assert all(name in str(info.value) for name in OFFLINE_MODELS)


@pytest.mark.skipif(not (cache_dir() / "smollm2-135m" / "model.safetensors").is_file(),
                    reason="smollm2-135m is not cached here (run `lab7 run` once to fetch it)")
def test_cached_smollm2_writes_english():
    from lab7_helpers import generate

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    text = generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12, temperature=0)[0]
    assert "Paris" in text


def test_weights_on_disk_frees_the_weights_and_brings_them_back_exactly(tiny, tokenizer):
    model = trainable_copy(tiny[0])
    ids = tokenizer(["Say hello."], return_tensors="pt")
    before = model(**ids).logits
    with weights_on_disk(model):
        assert sum(p.numel() for p in model.parameters()) == 0
    assert torch.equal(model(**ids).logits, before)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert all(p.requires_grad for p in model.parameters())


