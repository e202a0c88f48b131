"""Which model to use by default: GPT-2 when it can be loaded, else the offline SmolLM2."""

from __future__ import annotations

from pathlib import Path

from ..models import SMOLLM2, TINY_GPT2


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers within ``timeout`` seconds (False when HF_HUB_OFFLINE is set)."""
    import os
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(lambda: socket.create_connection(("huggingface.co", 443), timeout=timeout).close()).result(
            timeout + 1)
        return True
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False)


def in_hub_cache(name: str) -> bool:
    """Whether the Hugging Face cache holds ``name``'s config (so it loads without the network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def default_model() -> tuple[str, str]:
    """``(model, why)``: gpt2 when it is cached or the Hub answers within a few seconds, else smollm2-135m."""
    if in_hub_cache("gpt2"):
        return "gpt2", "found gpt2 in the Hugging Face cache"
    if hub_reachable():
        return "gpt2", "the Hugging Face Hub is reachable"
    return SMOLLM2, "the Hugging Face Hub is not reachable from here"


def check_model_available(name: str) -> str | None:
    """None if ``name`` can be loaded now, else a message saying why not and what works offline."""
    if name in (TINY_GPT2, SMOLLM2) or Path(name).is_dir() or in_hub_cache(name) or hub_reachable():
        return None
    return (f"cannot load the model {name!r}: it is not a local folder, not in the Hugging Face cache, and the "
            f"Hub is not reachable. Offline, use --model smollm2-135m (a real small model) or --model tiny-gpt2 "
            f"(random weights, for smoke tests), or a local folder with a model in safetensors format.")
