"""Prompt files, shards, result files, and both engines on the tiny random Llama.

The vLLM engine starts once for this file (about 20-30 s on CPU), in a thread that is not the
main thread, as it does in a workload actor; every vLLM call is made from such a thread. The
test that closes it comes last in the file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil  # type: ignore[import-untyped]  # psutil ships no type hints
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tiny_llama import build_tiny_llama
from workloads.engines import (
    Engine,
    InputError,
    Prompt,
    VllmEngine,
    open_engine,
    read_prompts,
    shard_ranges,
    write_results,
)
from workloads.models import ModelError

T = TypeVar("T")
GREEDY = {"temperature": 0.0, "max_tokens": 12}


def rows_file(folder: Path, lines: list[Any], name: str = "prompts.jsonl") -> Path:
    path = folder / name
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


def mixed_prompts(count: int) -> list[Prompt]:
    """Prompt rows and chat rows, int and str ids, prompts of different lengths."""
    words = ["the quick brown fox", "habari ya asubuhi", "what is the capital of france?"]
    prompts = []
    for i in range(count):
        text = " ".join([words[i % 3]] * (1 + i % 4))
        if i % 3 == 2:
            messages = [{"role": "user", "content": text}]
            prompts.append(Prompt(id=f"chat-{i}", messages=messages, line=i + 1))
        else:
            prompts.append(Prompt(id=i, prompt=text, line=i + 1))
    return prompts


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn in a new thread (not the main one), as a workload actor does; its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run, name="workload")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def adapter(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (not zero) weights, so that it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    folder = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------------------------------------
# read_prompts


def test_a_prompt_file_gives_its_rows_in_order_with_their_lines(tmp_path: Path) -> None:
    path = rows_file(
        tmp_path,
        [
            {"id": 1, "prompt": "hello"},
            "",
            {"id": "b", "messages": [{"role": "user", "content": "hi"}], "extra": "kept aside"},
        ],
    )
    assert read_prompts(path) == [
        Prompt(id=1, prompt="hello", line=1),
        Prompt(id="b", messages=[{"role": "user", "content": "hi"}], line=3),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "prompts.jsonl:2: not valid JSON (Expecting property name enclosed in"),
        ("[1, 2]", "prompts.jsonl:2: a row must be a JSON object, not a list; each line is"),
        ({"prompt": "x"}, 'prompts.jsonl:2: row has no "id" field; each line is a JSON object'),
        ({"id": 1.5, "prompt": "x"}, 'prompts.jsonl:2: "id" must be a string or an integer, not a'),
        ({"id": True, "prompt": "x"}, '"id" must be a string or an integer, not a boolean'),
        ({"id": "a", "prompt": "x"}, 'prompts.jsonl:2: id "a" is also on line 1; ids must be'),
        ({"id": 2}, 'prompts.jsonl:2: row has no "prompt" or "messages" field; each line is'),
        (
            {"id": 2, "prompt": "x", "messages": []},
            'prompts.jsonl:2: row has both "prompt" and "messages"; give one of them',
        ),
        ({"id": 2, "prompt": ""}, 'prompts.jsonl:2: "prompt" must be a non-empty string, not'),
        ({"id": 2, "prompt": 7}, '"prompt" must be a non-empty string, not a number'),
        ({"id": 2, "messages": "hi"}, '"messages" must be a non-empty list of {"role", "content"}'),
        ({"id": 2, "messages": [{"role": "user"}]}, 'messages[0] must be an object with "role"'),
        (
            {"id": 2, "messages": [{"role": "bot", "content": "x"}]},
            'prompts.jsonl:2: messages[0].role is "bot"; use one of system, user, assistant',
        ),
        (
            {"id": 2, "messages": [{"role": "user", "content": ["x"]}]},
            "messages[0].content must be a string, not a list",
        ),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, line: Any, message: str) -> None:
    path = rows_file(tmp_path, [{"id": "a", "prompt": "fine"}, line])
    with pytest.raises(InputError) as e:
        read_prompts(path)
    assert message in str(e.value)


def test_every_bad_line_is_reported_not_only_the_first(tmp_path: Path) -> None:
    path = rows_file(tmp_path, [{"id": 1}, {"id": 2, "prompt": "ok"}, "nope", {"id": 2}])
    with pytest.raises(InputError) as e:
        read_prompts(path, label="data/in.jsonl")
    lines = str(e.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        "data/in.jsonl:1",
        "data/in.jsonl:3",
        "data/in.jsonl:4",
    ]


def test_an_empty_or_missing_prompt_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^prompts.jsonl: has no rows; each line is"):
        read_prompts(rows_file(tmp_path, [""]))
    with pytest.raises(InputError, match=r"^gone.jsonl: cannot read the prompt file"):
        read_prompts(tmp_path / "gone.jsonl")


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": "\xff"}\n')
    with pytest.raises(InputError, match=r"^p.jsonl:2: not UTF-8 text; save the file as UTF-8$"):
        read_prompts(path)


# ---------------------------------------------------------------------------------------------
# shard_ranges and write_results


@given(count=st.integers(0, 10_000), shards=st.integers(1, 64))
def test_shards_cover_every_row_once_in_order_and_nearly_evenly(count: int, shards: int) -> None:
    ranges = shard_ranges(count, shards)
    assert len(ranges) == shards
    assert ranges[0][0] == 0
    assert ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [end - start for start, end in ranges]
    assert min(sizes) >= 0
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_shard_ranges_refuses_no_shards() -> None:
    with pytest.raises(ValueError, match="shards must be at least 1, not 0"):
        shard_ranges(3, 0)


def test_results_are_written_one_per_line_in_the_order_given(tmp_path: Path) -> None:
    results: list[dict[str, Any]] = [{"id": 2, "text": "b"}, {"id": "x", "text": "é"}]
    path = write_results(tmp_path / "out" / "results.jsonl", results)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == results
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.jsonl"]


# ---------------------------------------------------------------------------------------------
# Opening engines


def test_open_engine_refuses_unknown_engines_and_bad_settings(tiny: Path) -> None:
    with pytest.raises(ValueError, match="engine 'llama.cpp' is not one of vllm, transformers"):
        open_engine("llama.cpp", tiny)
    with pytest.raises(ValueError, match=r"gpu_fraction must be in \(0, 1\], not 0"):
        open_engine("transformers", tiny, gpu_fraction=0)
    with pytest.raises(ModelError, match="max_model_len 4096 is more than the model's context"):
        open_engine("transformers", tiny, max_model_len=4096)
    with pytest.raises(ModelError, match="missing: no such model folder"):
        open_engine("vllm", tiny / "missing")


# ---------------------------------------------------------------------------------------------
# The transformers engine


@pytest.fixture(scope="module")
def hf(tiny: Path) -> Iterator[Engine]:
    import torch

    threads = torch.get_num_threads()
    engine = open_engine("transformers", tiny, threads=1)
    assert torch.get_num_threads() == 1
    yield engine
    engine.close()
    torch.set_num_threads(threads)  # the setting is the process's: give it back to other tests


@pytest.fixture(scope="module")
def hf_adapter(tiny: Path, adapter: Path) -> Iterator[Engine]:
    engine = open_engine("transformers", tiny, adapter_dir=adapter)
    yield engine
    engine.close()


def check_results(results: list[dict[str, Any]], prompts: list[Prompt], max_tokens: int) -> None:
    assert [r["id"] for r in results] == [p.id for p in prompts]
    for r in results:
        assert set(r) == {"id", "text", "prompt_tokens", "completion_tokens", "finish_reason"}
        assert isinstance(r["text"], str)
        assert 1 <= r["completion_tokens"] <= max_tokens
        assert r["finish_reason"] in ("stop", "length")


def test_transformers_gives_one_result_per_row_in_input_order(hf: Engine) -> None:
    prompts = mixed_prompts(11)  # two batches, rows reordered by length inside
    results = hf.generate(prompts, GREEDY)
    check_results(results, prompts, 12)
    assert [r["prompt_tokens"] for r in results] == [len(hf.token_ids(p)) for p in prompts]
    assert hf.generate([], GREEDY) == []


def test_chat_rows_go_through_the_chat_template(hf: Engine) -> None:
    chat = Prompt(id=1, messages=[{"role": "user", "content": "habari"}])
    rendered = hf.tokenizer.decode(hf.token_ids(chat))
    assert rendered == "<s>user\nhabari</s>\n<s>assistant\n"


def test_transformers_greedy_output_does_not_depend_on_the_batch(hf: Engine) -> None:
    prompts = mixed_prompts(8)
    together = hf.generate(prompts, GREEDY)
    assert hf.generate(prompts, GREEDY) == together
    alone = [hf.generate([p], GREEDY)[0] for p in prompts]
    assert alone == together


def test_transformers_seeded_sampling_repeats(hf: Engine) -> None:
    prompts = mixed_prompts(4)
    sampling = {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": 7}
    first = hf.generate(prompts, sampling)
    assert hf.generate(prompts, sampling) == first
    others = hf.generate(prompts, {**sampling, "seed": 8})
    assert [r["text"] for r in others] != [r["text"] for r in first]


def test_transformers_honours_max_tokens_and_stop_strings(hf: Engine) -> None:
    prompt = [Prompt(id=1, prompt="the quick brown fox")]
    long = hf.generate(prompt, {"temperature": 0, "max_tokens": 20})[0]
    short = hf.generate(prompt, {"temperature": 0, "max_tokens": 3})[0]
    assert (short["completion_tokens"], short["finish_reason"]) == (3, "length")
    assert long["text"].startswith(short["text"])
    stop = long["text"][len(long["text"]) // 2 :][:2]
    stopped = hf.generate(prompt, {"temperature": 0, "max_tokens": 20, "stop": [stop]})[0]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == long["text"][: long["text"].index(stop)]
    assert stopped["completion_tokens"] < long["completion_tokens"]


def test_an_adapter_changes_the_text_but_not_the_shape(hf: Engine, hf_adapter: Engine) -> None:
    prompts = mixed_prompts(6)
    base = hf.generate(prompts, GREEDY)
    tuned = hf_adapter.generate(prompts, GREEDY)
    check_results(tuned, prompts, 12)
    assert [r["prompt_tokens"] for r in tuned] == [r["prompt_tokens"] for r in base]
    assert sum(a["text"] != b["text"] for a, b in zip(base, tuned, strict=True)) >= 4


def test_a_prompt_longer_than_the_context_is_named_before_any_work(hf: Engine) -> None:
    prompts = [Prompt(id=1, prompt="fox", line=1), Prompt(id="x", prompt="fox " * 300, line=2)]
    with pytest.raises(InputError, match=r'context of 256 tokens .* line 2 \(id "x"\): 30[0-9]'):
        hf.generate(prompts, GREEDY)


def test_bad_sampling_settings_are_named(hf: Engine) -> None:
    with pytest.raises(InputError, match="^sampling: temperature: Input should be less than or"):
        hf.generate(mixed_prompts(1), {"temperature": 5})


def test_chat_rows_need_a_model_with_a_chat_template(tmp_path: Path) -> None:
    folder = build_tiny_llama(tmp_path / "plain")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    with open_engine("transformers", folder) as engine:
        chat = Prompt(id="c", messages=[{"role": "user", "content": "hi"}], line=4)
        with pytest.raises(InputError, match=r'^row "c" \(line 4\) has chat messages, but the'):
            engine.generate([chat], GREEDY)


# ---------------------------------------------------------------------------------------------
# The vLLM engine: one start for the whole file, in a thread that is not the main one


@pytest.fixture(scope="module")
def vllm_engine(tiny: Path, adapter: Path) -> Iterator[VllmEngine]:
    engine = in_thread(
        lambda: open_engine("vllm", tiny, adapter_dir=adapter, max_model_len=256, threads=1)
    )
    assert isinstance(engine, VllmEngine)
    yield engine
    engine.close()


def test_vllm_gives_one_result_per_row_in_input_order(vllm_engine: VllmEngine) -> None:
    prompts = mixed_prompts(11)
    results = in_thread(lambda: vllm_engine.generate(prompts, GREEDY))
    check_results(results, prompts, 12)
    # vLLM saw the very token ids the engine rendered (chat rows through the chat template)
    assert [r["prompt_tokens"] for r in results] == [len(vllm_engine.token_ids(p)) for p in prompts]


def test_vllm_applies_the_adapter_as_transformers_does(
    vllm_engine: VllmEngine, hf: Engine, hf_adapter: Engine
) -> None:
    prompts = mixed_prompts(6)
    ours = in_thread(lambda: vllm_engine.generate(prompts, GREEDY))
    tuned = hf_adapter.generate(prompts, GREEDY)
    base = hf.generate(prompts, GREEDY)
    # greedy on the same weights: the same text, token counts and finish reasons (a row may
    # differ where float sums of the two engines' kernels break a near tie)
    assert sum(a == b for a, b in zip(ours, tuned, strict=True)) >= 5
    assert sum(a["text"] == b["text"] for a, b in zip(ours, base, strict=True)) <= 1


def test_vllm_seeded_sampling_repeats_and_stop_strings_end_rows(vllm_engine: VllmEngine) -> None:
    prompts = mixed_prompts(4)
    sampling = {"temperature": 1.0, "max_tokens": 12, "seed": 3}
    first = in_thread(lambda: vllm_engine.generate(prompts, sampling))
    assert in_thread(lambda: vllm_engine.generate(prompts, sampling)) == first
    long = first[0]["text"]
    stop = long[len(long) // 2 :][:2]
    stopped = in_thread(lambda: vllm_engine.generate(prompts[:1], {**sampling, "stop": [stop]}))
    assert stopped[0]["finish_reason"] == "stop"
    assert stopped[0]["text"] == long[: long.index(stop)]


def test_vllm_names_a_prompt_too_long_and_keeps_running(vllm_engine: VllmEngine) -> None:
    prompts = [Prompt(id="long", prompt="fox " * 300, line=9)]
    with pytest.raises(InputError, match=r'line 9 \(id "long"\)'):
        in_thread(lambda: vllm_engine.generate(prompts, GREEDY))
    assert len(in_thread(lambda: vllm_engine.generate(mixed_prompts(2), GREEDY))) == 2


def test_vllm_streams_the_results_generate_gives_and_aborts_what_is_left(
    vllm_engine: VllmEngine,
) -> None:
    prompts = mixed_prompts(9)
    expected = in_thread(lambda: vllm_engine.generate(prompts, GREEDY))
    streamed = in_thread(lambda: list(vllm_engine.generate_stream(prompts, GREEDY)))
    assert sorted(i for i, _ in streamed) == list(range(9))
    assert [r for _, r in sorted(streamed, key=lambda x: x[0])] == expected

    def first_then_close() -> None:
        stream = vllm_engine.generate_stream(prompts, {**GREEDY, "max_tokens": 200})
        next(stream)
        stream.close()  # the rest are aborted, not left running in the engine

    in_thread(first_then_close)
    assert not vllm_engine._llm.llm_engine.has_unfinished_requests()
    assert in_thread(lambda: vllm_engine.generate(prompts[:2], GREEDY)) == expected[:2]


def engine_processes() -> dict[int, str]:
    """This process's descendants that vLLM named ("VLLM::EngineCore", "VLLM::Worker")."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            name = child.name()
        except psutil.NoSuchProcess:
            continue
        if name.startswith("VLLM::"):
            found[child.pid] = name
    return found


def test_vllm_close_ends_every_process_it_started(vllm_engine: VllmEngine) -> None:
    """Last in the file: it closes the engine that the tests above share."""
    running = engine_processes()
    assert sorted(running.values()) == ["VLLM::EngineCore", "VLLM::Worker"]
    assert set(running) <= vllm_engine.pids
    in_thread(vllm_engine.close)
    assert engine_processes() == {}
    assert not [pid for pid in running if psutil.pid_exists(pid)]
    with pytest.raises(RuntimeError, match="this engine is closed"):
        vllm_engine.generate(mixed_prompts(1), GREEDY)
