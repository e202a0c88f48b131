"""Load a model and its tokenizer, freeze it, copy it. Two models need no download: ``"tiny-gpt2"`` (random
weights, GPT-2's tokenizer: gibberish, for tests) and ``"smollm2-135m"`` (SmolLM2-135M-Instruct, Apache-2.0)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from .sources.offline_models import SMOLLM2, smollm2_path

TINY_GPT2 = "tiny-gpt2"
OFFLINE_MODELS = (TINY_GPT2, SMOLLM2)
GPT2_TOKENIZER_DIR = Path(__file__).parent / "assets" / "gpt2_tokenizer"


def mixed_precision_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for training on ``device``: bf16 on a GPU that supports it, else fp16 (Colab's T4);
    None (float32) on CPU. ``LAB7_PRECISION=fp16|bf16|fp32`` chooses on a GPU."""
    if torch.device(device).type != "cuda":
        return None
    chosen = os.environ.get("LAB7_PRECISION")
    if chosen:
        if chosen not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"LAB7_PRECISION must be fp16, bf16 or fp32, not {chosen!r}")
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[chosen]
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def describe_runtime() -> str:
    """One line for the notebook: the device the lab will use and its training precision."""
    if not torch.cuda.is_available():
        return f"CPU ({torch.get_num_threads()} threads), training in float32. A GPU runtime is faster."
    dtype = mixed_precision_dtype("cuda")
    return f"GPU: {torch.cuda.get_device_name(0)}, training with {str(dtype).split('.')[-1]} mixed precision."


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer, 64-wide GPT-2 with random weights drawn from ``seed``."""
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=512, vocab_size=50257,
                        bos_token_id=50256, eos_token_id=50256)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout probability to 0 (as TRL does), so that losses and log-probs are deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def load_model(name_or_path: str, device: str | None = None) -> tuple[torch.nn.Module, object]:
    """``(model, tokenizer)``: float32, dropout off, on ``device`` (default: CUDA if present, else CPU).

    ``name_or_path``: an offline model, a local folder, or a Hub name such as ``"gpt2"`` (safetensors only).
    A tokenizer without a pad token (GPT-2) pads with EOS; the labels mask padding out of the losses.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name_or_path == TINY_GPT2:
        model, source = tiny_gpt2(), GPT2_TOKENIZER_DIR
    else:
        source = smollm2_path() if name_or_path == SMOLLM2 else name_or_path
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
        except OSError as err:
            raise OSError(
                f"could not load the model {name_or_path!r}: {err}\n"
                f"Without internet, use one of the offline models: {', '.join(OFFLINE_MODELS)}, "
                "or a local folder that holds a model in safetensors format.") from err
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return disable_dropout(model).to(device), tokenizer


def context_length(model: torch.nn.Module) -> int | None:
    """The most tokens the model reads, prompt and response together (more crash a model with learned positions,
    such as GPT-2), or None when its config does not say."""
    return getattr(model.config, "max_position_embeddings", None)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` a frozen reference, in place: ``eval()`` mode and ``requires_grad=False`` everywhere."""
    model.eval()
    model.requires_grad_(False)
    return model


def remove_forward_patch(model: torch.nn.Module) -> torch.nn.Module:
    """Undo an instance-level ``forward`` override, such as the fused LM head TRL's ``DPOTrainer`` installs: it is
    a closure over the original model, so a deep copy would still run the original's forward."""
    model.__dict__.pop("forward", None)
    return model


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in ``train()`` mode with every parameter trainable (the original is untouched)."""
    policy = remove_forward_patch(copy.deepcopy(model))
    policy.train()
    policy.requires_grad_(True)
    return policy
