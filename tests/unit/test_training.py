"""The training core on a tiny real Llama: datasets, LoRA steps, checkpoints, data parallelism."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.tiny_llama import build_tiny_llama
from workloads.training import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DatasetError,
    Trainer,
    init_distributed,
    load_examples,
    load_tokenizer,
    pick_master_address,
)

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "habari ya asubuhi rafiki yangu",
    "allinllachu kachkanki wawqiy",
    "what is the capital of france? paris is the capital of france.",
    "user assistant system question answer",
]
TEXT_HINT = 'each line must be a JSON object with a "text" string, like {"text": "..."}'
CHAT_HINT = (
    'each line must be a JSON object whose "messages" is a list of {"role": "system"|"user"|'
    '"assistant", "content": "..."}, like {"messages": [{"role": "user", "content": "Hi"}, '
    '{"role": "assistant", "content": "Hello"}]}'
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def examples(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[list[int]]:
    """A small repetitive dataset whose rows are of different lengths (so batches are padded)."""
    data = tmp_path_factory.mktemp("data") / "data.jsonl"
    data.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 4))
    return load_examples(data, "data.jsonl", "text", "text", "messages", _tokenizer(model_dir), 64)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One thread per test process (the machine is shared); the next tests get theirs back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokenizer(model_dir: Path) -> Any:
    return load_tokenizer(model_dir)


def _section(model_dir: Path, **training: Any) -> dict[str, Any]:
    lora = {"r": 8, "alpha": 16, "dropout": training.pop("dropout", 0.0)}
    return {
        "base_model": str(model_dir),
        "datasets": [{"path": "/data/data.jsonl"}],
        "lora": {**lora, "target_modules": training.pop("target_modules", ["q_proj", "v_proj"])},
        "training": {"learning_rate": 1e-3, "batch_size": 2, "seed": 7, **training},
    }


def _adapter_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad
    }


def _summed_loss(model: torch.nn.Module, rows: list[list[int]]) -> tuple[float, int]:
    """(sum of the token losses, number of target tokens) of `rows`, each run on its own."""
    total, targets = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            total += float(model(input_ids=ids, labels=ids).loss) * (len(row) - 1)
            targets += len(row) - 1
    return total, targets


def _consume(trainer: Trainer) -> list[int]:
    """The examples of the trainer's next step (all micro-batches), after taking the step."""
    rows = [i for micro in trainer.next_batch_indices() for i in micro]
    trainer.train_step()
    return rows


# ---------------------------------------------------------------------------------------------
# Training


def test_the_loss_goes_down_over_thirty_steps_on_a_repetitive_dataset(
    model_dir: Path, examples: list[list[int]]
) -> None:
    section = _section(
        model_dir,
        max_steps=30,
        learning_rate=1e-2,
        batch_size=4,
        target_modules="all-linear",
        lr_scheduler="constant",
    )
    trainer = Trainer(model_dir, examples, section, threads=1)
    stats = [trainer.train_step() for _ in range(trainer.total_steps)]

    assert [s.step for s in stats] == list(range(1, 31))
    first, last = sum(s.loss for s in stats[:5]) / 5, sum(s.loss for s in stats[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert trainer.losses == [(s.step, s.loss) for s in stats]
    assert all(s.tokens > 0 and s.seconds > 0 for s in stats)
    with pytest.raises(RuntimeError, match="all 30 steps are done"):
        trainer.train_step()


def test_a_padded_batch_has_the_loss_of_its_rows_run_one_by_one(
    model_dir: Path, examples: list[list[int]]
) -> None:
    trainer = Trainer(model_dir, examples, _section(model_dir, max_steps=1, batch_size=4))
    (rows,) = trainer.next_batch_indices()
    assert len({len(examples[i]) for i in rows}) > 1  # the batch really is padded
    total, targets = _summed_loss(trainer.model, [examples[i] for i in rows])

    stats = trainer.train_step()

    assert stats.loss == pytest.approx(total / targets, rel=1e-5)
    assert stats.tokens == sum(len(examples[i]) for i in rows)


def test_epochs_visit_every_example_once_per_epoch_in_a_seeded_order(
    model_dir: Path, examples: list[list[int]]
) -> None:
    section = _section(model_dir, epochs=2, batch_size=3)
    trainer = Trainer(model_dir, examples, section)
    assert trainer.total_steps == 14  # ceil(2 * 20 / 3)
    seen: list[int] = []
    while trainer.step < trainer.total_steps:
        seen += [i for micro in trainer.next_batch_indices() for i in micro]
        trainer.train_step()

    assert sorted(seen[:20]) == sorted(seen[20:40]) == list(range(20))
    assert seen[:20] != seen[20:40]  # a new order each epoch
    again = Trainer(model_dir, examples, section)
    assert [i for micro in again.next_batch_indices() for i in micro] == seen[:3]


def test_a_resumed_run_repeats_the_losses_of_an_unbroken_run(
    model_dir: Path, examples: list[list[int]], tmp_path: Path
) -> None:
    # dropout and gradient accumulation on, so that RNG and data position both matter
    section = _section(
        model_dir, max_steps=6, dropout=0.1, gradient_accumulation_steps=2, warmup_steps=2
    )
    straight = Trainer(model_dir, examples, section, threads=1)
    for _ in range(6):
        straight.train_step()

    first = Trainer(model_dir, examples, section, threads=1)
    for _ in range(3):
        first.train_step()
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = Trainer(model_dir, examples, section, threads=1)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step == 3
    assert resumed.losses == first.losses
    tail = [resumed.train_step() for _ in range(3)]

    assert [s.step for s in tail] == [4, 5, 6]
    assert resumed.step == straight.step == resumed.total_steps == 6
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4, 5, 6]
    for (_, got), (_, want) in zip(resumed.losses, straight.losses, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    want_weights = _adapter_weights(straight)
    for name, got_weight in _adapter_weights(resumed).items():
        torch.testing.assert_close(got_weight, want_weights[name], rtol=0, atol=1e-6)


def test_a_run_resumed_with_another_global_batch_goes_on_from_the_same_example(
    model_dir: Path, examples: list[list[int]], tmp_path: Path
) -> None:
    # as when a job comes back on fewer or more GPUs: the epochs left are re-cut into steps
    before = Trainer(model_dir, examples, _section(model_dir, epochs=1, batch_size=2))
    assert before.total_steps == 10
    stream = [i for _ in range(10) for i in _consume(before)]
    first = Trainer(model_dir, examples, _section(model_dir, epochs=1, batch_size=2))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint(tmp_path / "ckpt")

    wider = Trainer(model_dir, examples, _section(model_dir, epochs=1, batch_size=4))
    wider.load_checkpoint(tmp_path / "ckpt")

    assert wider.step == 3
    assert wider.total_steps == 3 + 4  # the 14 examples left, 4 a step
    assert wider.next_batch_indices() == [stream[6:10]]
    assert [s.step for s in (wider.train_step() for _ in range(4))] == [4, 5, 6, 7]


def test_a_checkpoint_from_other_data_is_refused(
    model_dir: Path, examples: list[list[int]], tmp_path: Path
) -> None:
    trainer = Trainer(model_dir, examples, _section(model_dir, max_steps=2))
    trainer.train_step()
    trainer.save_checkpoint(tmp_path / "ckpt")
    other = Trainer(model_dir, examples[:-1], _section(model_dir, max_steps=2))

    with pytest.raises(ValueError, match="trained on 20 examples with seed 7; this run has 19"):
        other.load_checkpoint(tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------------
# Data parallel over two processes (gloo)


def _rank_main(
    rank: int, address: str, model_dir: str, examples: list[list[int]], out: str
) -> None:
    init_distributed(address, rank, 2, backend="gloo", timeout_s=60, local_ip="127.0.0.1")
    try:
        section = _section(Path(model_dir), max_steps=3, gradient_accumulation_steps=2)
        trainer = Trainer(model_dir, examples, section, rank=rank, world_size=2, threads=1)
        mine = [examples[i] for micro in trainer.next_batch_indices() for i in micro]
        first_sum, first_targets = _summed_loss(trainer.model, mine)
        stats = [trainer.train_step() for _ in range(3)]
        result = {
            "first_sum": first_sum,
            "first_targets": first_targets,
            "losses": [s.loss for s in stats],
            "tokens": [s.tokens for s in stats],
            "weights": _adapter_weights(trainer),
        }
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_like_one_process_with_the_same_global_batch(
    model_dir: Path, examples: list[list[int]], tmp_path: Path
) -> None:
    address = pick_master_address("127.0.0.1")
    mp.spawn(_rank_main, args=(address, str(model_dir), examples, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # one process, twice the per-rank batch: the same rows in the same micro-batches
    alone = Trainer(
        model_dir,
        examples,
        _section(model_dir, max_steps=3, batch_size=4, gradient_accumulation_steps=2),
        threads=1,
    )
    stats = [alone.train_step() for _ in range(3)]

    # every rank holds the same weights and reports the same loss and token count
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["tokens"] == ranks[1]["tokens"] == [s.tokens for s in stats]
    # the first loss is the mean over both ranks' target tokens (token-weighted: with equal
    # token counts, the mean of the two ranks' losses)
    summed = sum(r["first_sum"] for r in ranks)
    targets = sum(r["first_targets"] for r in ranks)
    assert ranks[0]["losses"][0] == pytest.approx(summed / targets, rel=1e-5)
    # Equal to one process up to float rounding, not bit for bit: the two ranks pad their rows
    # to their own longest row and sum half the token losses each before the all_reduce adds
    # them, so the additions happen in another order (~1e-7 relative per step). Adam divides
    # by sqrt(v), which can stretch that for the smallest gradients, hence 1e-5 on weights of
    # ~1e-2 after 3 steps at lr 1e-3.
    assert ranks[0]["losses"] == pytest.approx([s.loss for s in stats], rel=1e-5)
    for name, weight in _adapter_weights(alone).items():
        torch.testing.assert_close(ranks[0]["weights"][name], weight, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Datasets


@pytest.mark.parametrize(
    ("fmt", "lines", "message"),
    [
        (
            "text",
            ['{"text": "ok"}', '{"text": "cut'],
            "data.jsonl:2: not valid JSON at column 10: Unterminated string starting; " + TEXT_HINT,
        ),
        (
            "text",
            ['{"text": "ok"}', "", '{"body": "no text"}', "[1]", '{"text": 3}'],
            'data.jsonl:3: row has no "text" field; ' + TEXT_HINT + " (2 more bad lines: 4, 5)",
        ),
        ("text", ['{"text": ["a"]}'], 'data.jsonl:1: "text" is a list, not a string; ' + TEXT_HINT),
        (
            "chat",
            ['{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}'],
            'data.jsonl:1: message 2 has role "bot"; the role must be system, user or '
            "assistant; " + CHAT_HINT,
        ),
        (
            "chat",
            ['{"messages": [{"role": "user", "content": 5}]}'],
            'data.jsonl:1: message 1 has a "content" that is a number, not a string; ' + CHAT_HINT,
        ),
        ("text", [], "data.jsonl:1: the dataset has no rows; " + TEXT_HINT),
        ("chat", ["", "  "], "data.jsonl:1: the dataset has no rows; " + CHAT_HINT),
    ],
    ids=[
        "bad JSON",
        "missing field",
        "wrong type",
        "bad role",
        "content not text",
        "empty",
        "blank",
    ],
)
def test_a_bad_dataset_line_is_named_by_file_and_line(
    model_dir: Path, tmp_path: Path, fmt: str, lines: list[str], message: str
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(line + "\n" for line in lines))

    with pytest.raises(DatasetError, match="^" + re.escape(message) + "$"):
        load_examples(data, "data.jsonl", fmt, "text", "messages", _tokenizer(model_dir), 64)


def test_chat_rows_go_through_the_chat_template_and_long_rows_are_cut(
    model_dir: Path, tmp_path: Path
) -> None:
    tokenizer = _tokenizer(model_dir)
    chats = [
        [{"role": "user", "content": "what is the capital of france?"}],
        [
            {"role": "system", "content": "answer in one word"},
            {"role": "user", "content": "capital of france?"},
            {"role": "assistant", "content": "paris"},
        ],
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"conv": c, "id": i}) + "\n" for i, c in enumerate(chats)))

    rows = load_examples(data, "chat.jsonl", "chat", "text", "conv", tokenizer, 1000)
    short = load_examples(data, "chat.jsonl", "chat", "text", "conv", tokenizer, 16)

    want = [list(tokenizer.apply_chat_template(c, tokenize=True)["input_ids"]) for c in chats]
    assert rows == want
    assert tokenizer.decode(rows[1]).startswith("<s>system\nanswer in one word</s>")
    assert short == [row[:16] for row in want]
    assert len(rows[1]) > 16


def test_text_rows_start_with_bos_and_end_with_eos(model_dir: Path, tmp_path: Path) -> None:
    tokenizer = _tokenizer(model_dir)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"body": "habari ya asubuhi"}) + "\n")

    (row,) = load_examples(data, "data.jsonl", "text", "body", "messages", tokenizer, 64)

    assert row[0] == tokenizer.bos_token_id
    assert row[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(row[1:-1]) == "habari ya asubuhi"


# ---------------------------------------------------------------------------------------------
# The adapter


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21
def test_the_saved_adapter_loads_with_peft_and_computes_what_was_trained(
    model_dir: Path, examples: list[list[int]], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = Trainer(model_dir, examples, _section(model_dir, max_steps=3, learning_rate=1e-2))
    for _ in range(3):
        trainer.train_step()
    folder = trainer.save_adapter(tmp_path / "adapter")

    assert (folder / ADAPTER_WEIGHTS).is_file()
    assert not list(folder.glob("*.bin"))
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    ids = torch.tensor([examples[0]])
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(plain, want)  # the adapter changed the model
