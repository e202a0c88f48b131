"""Shared fixtures. Everything runs offline on ``tiny-gpt2`` (random weights, GPT-2's real tokenizer)."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of waiting on a network that is not there
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One torch thread per process (the notebook kernels, benchmarks and `lab7` runs started here inherit it): on
# tiny-gpt2 every operation is too small to split, and two threads on a 2-core machine that is also running a
# sandbox or a second process spend most of their time waiting for each other (a DPO step: 6x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lab7_helpers import freeze, load_model, trainable_copy  # noqa: E402

# The slowest files first (about 90 s down to 20 s each on the project's 2-core machine): the two workers take files
# in this order, so the files left for the end are short ones and both workers finish at about the same time.
SLOWEST_FILES = ("test_notebooks.py", "test_benchmarks.py", "test_cli_bad_inputs.py", "test_grading_attacks.py",
                 "test_engine.py", "test_scale_out.py", "test_grading.py", "test_cli.py", "test_grading_answers.py",
                 "test_training.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


PAIRS = [
    {"prompt": "Give advice to a student who is behind.", "chosen": "Pick one small task and finish it today.",
     "rejected": "Just work harder."},
    {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "It is 5, as everybody knows, no doubt about it."},
    {"prompt": "Say hello.", "chosen": "Hello! How can I help?", "rejected": "Go away."},
]


@pytest.fixture(scope="session")
def sandboxed() -> bool:
    """Grade in the bubblewrap sandbox where it is installed (CI installs it); elsewhere as --no-sandbox does."""
    return shutil.which("bwrap") is not None


@pytest.fixture(scope="session")
def tiny():
    """(frozen base model, tokenizer). Tests that train take a ``trainable_copy``."""
    model, tokenizer = load_model("tiny-gpt2", device="cpu")
    return freeze(model), tokenizer


@pytest.fixture
def tokenizer(tiny):
    return tiny[1]


@pytest.fixture
def pairs():
    return [dict(p) for p in PAIRS]


def perturbed_copy(model, scale=0.05, seed=1):
    """A trainable copy whose weights differ from ``model``'s, so policy != reference."""
    policy = trainable_copy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return policy


@pytest.fixture
def policy(tiny):
    return perturbed_copy(tiny[0])


@pytest.fixture
def tiny_llama():
    """A factory of tiny random Llama models (GPT-2's vocabulary, grouped-query attention), seeded:
    ``tiny_llama(**config_overrides)``. The Llama family (SmolLM2) uses ``nn.Linear`` where GPT-2 uses ``Conv1D``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(**overrides) -> LlamaForCausalLM:
        torch.manual_seed(0)
        config = dict(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
        return LlamaForCausalLM(LlamaConfig(**{**config, **overrides}))
    return make
