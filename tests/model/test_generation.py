"""generate(): per-phase budgets, the thinking cap, the switch, sampling, stop strings, the CLI.

References are independent of the code under test: greedy decoding by full uncached forwards
(``naive_greedy``), and a fresh ``generate`` of the answering budget on the same context.
"""

import io
import json
import sys

import pytest
import torch

from star_elastic import cli
from star_elastic.budget import Budget
from star_elastic.data import THINK_CLOSE, THINK_OPEN, load_tokenizer
from star_elastic.elastic_checkpoint import save_elastic
from star_elastic.generation import generate, grace_tokens, sample_next_tokens

from .helpers import tiny_model

TOKENIZER = load_tokenizer("char")
SMALL = Budget(hidden_size=24, mamba_heads_per_group=2, mamba_head_dim=4, attention_heads_per_group=1,
               mlp_width=20, moe_experts=4, moe_expert_width=8, moe_shared_width=12)
PROMPTS = ["Q:12+34=?\n", "Q:7+5=?\n", "Q:905+96=?\n"]  # different lengths: the batch is padded


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decode steps are tiny: on the shared 2-core machine one thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Steered(torch.nn.Module):
    """A real ElasticModel (caches and all) whose logits are steered, so a test controls what it writes.

    ``ban``: token ids never chosen (e.g. ``<eos>``, so sequences reach the answer phase);
    ``successor``: {token: next token} forced by the last input token (a scripted continuation).
    """

    def __init__(self, model, ban=(), successor=None):
        super().__init__()
        self.inner, self.config, self.ban, self.successor = model, model.config, list(ban), successor or {}

    @property
    def embeddings(self):
        return self.inner.embeddings

    def resolve_budget(self, budget):
        return self.inner.resolve_budget(budget)

    def forward(self, input_ids, budget=None, cache=None):
        logits = self.inner(input_ids, budget, cache=cache)
        logits[..., self.ban] = -1e9
        for token, following in self.successor.items():
            logits[..., following] += 1e6 * (input_ids == token).float()
        return logits


def ids_of(text):
    return TOKENIZER.encode(text)


def prompt_ids(prompt):
    return [TOKENIZER.bos_id] + ids_of(prompt) + [TOKENIZER.token_id(THINK_OPEN)]


@torch.no_grad()
def naive_greedy(model, context, budget, steps):
    """Greedy continuation by full uncached forwards, restricted to the tokenizer's ids."""
    out = []
    for _ in range(steps):
        logits = model(torch.tensor([context + out]), budget)[0, -1]
        out.append(int(logits[: TOKENIZER.vocab_size].argmax()))
    return out


@pytest.fixture(scope="module")
def steered():
    return Steered(tiny_model("M*E-M", seed=11), ban=[TOKENIZER.eos_id])


def test_phase_switch_equals_a_fresh_run_of_the_answering_budget(steered):
    cap, max_new = 6, 14
    results = generate(steered, TOKENIZER, PROMPTS, think_budget=SMALL, answer_budget=Budget(),
                       max_new_tokens=max_new, max_thinking_tokens=cap)
    close = TOKENIZER.token_id(THINK_CLOSE)
    for prompt, result in zip(PROMPTS, results):
        thinking = ids_of(result.thinking)
        assert result.thinking_tokens == len(thinking) <= cap + grace_tokens(cap)
        # the thinking is the thinking budget's greedy continuation; it ended by the model or by the cap
        assert thinking == naive_greedy(steered, prompt_ids(prompt), SMALL, len(thinking))
        if not result.thinking_capped:
            assert naive_greedy(steered, prompt_ids(prompt) + thinking, SMALL, 1) == [close]
        # the answer is the answering budget's greedy continuation of prompt + thinking + </think>
        context = prompt_ids(prompt) + thinking + [close]
        answer = ids_of(result.answer)
        assert len(answer) == result.answer_tokens == max_new - len(thinking) - 1 > 0
        assert answer == naive_greedy(steered, context, Budget(), len(answer))
        fresh = generate(steered, TOKENIZER, [prompt + THINK_OPEN + result.thinking + THINK_CLOSE], think=False,
                         budget=Budget(), max_new_tokens=len(answer))[0]
        assert fresh.answer == result.answer and fresh.thinking == ""
        assert result.text == THINK_OPEN + result.thinking + THINK_CLOSE + result.answer
        assert result.finish_reason == "length" and result.generated_tokens == max_new
        assert result.thinking_seconds > 0 and result.switch_seconds > 0 and result.answer_seconds > 0
    assert any(r.thinking_capped for r in results)


@pytest.mark.parametrize("switch", ["reprefill", "transplant"])
def test_batched_equals_one_by_one(steered, switch):
    kwargs = dict(think_budget=SMALL, answer_budget=Budget(), max_new_tokens=12, max_thinking_tokens=5,
                  switch=switch)
    batched = generate(steered, TOKENIZER, PROMPTS, **kwargs)
    for prompt, result in zip(PROMPTS, batched):
        alone = generate(steered, TOKENIZER, [prompt], **kwargs)[0]
        assert (alone.text, alone.thinking_tokens, alone.answer_tokens) == \
               (result.text, result.thinking_tokens, result.answer_tokens)


def test_transplant_is_exact_at_one_budget_and_keeps_the_thinking(steered):
    same = dict(budget=SMALL, max_new_tokens=12, max_thinking_tokens=5)
    assert [r.text for r in generate(steered, TOKENIZER, PROMPTS, switch="transplant", **same)] == \
           [r.text for r in generate(steered, TOKENIZER, PROMPTS, switch="reprefill", **same)]
    mixed = dict(think_budget=SMALL, answer_budget=Budget(), max_new_tokens=12, max_thinking_tokens=5)
    transplant = generate(steered, TOKENIZER, PROMPTS, switch="transplant", **mixed)
    reprefill = generate(steered, TOKENIZER, PROMPTS, switch="reprefill", **mixed)
    assert [r.thinking for r in transplant] == [r.thinking for r in reprefill]
    assert all(r.answer_tokens == t.answer_tokens > 0 for r, t in zip(reprefill, transplant))


def scripted(successor):
    """A model writing a fixed script: each token is chosen by the previous one."""
    table = {TOKENIZER.token_id(a) if len(a) > 1 else ids_of(a)[0]: TOKENIZER.token_id(b) if len(b) > 1
             else ids_of(b)[0] for a, b in successor.items()}
    return Steered(tiny_model("M*", seed=2), successor=table)


# thinking lines "123456789\n"; the answer "A:QQQ..."
LINES = scripted({THINK_OPEN: "1", **{str(i): str(i + 1) for i in range(1, 9)}, "9": "\n", "\n": "1",
                  THINK_CLOSE: "A", "A": ":", ":": "Q", "Q": "Q"})


@pytest.mark.parametrize("cap,expected_thinking", [
    (45, 49),  # grace 4: "12345" of line 5 at the cap, no newline within 4 more tokens -> forced at 49
    (47, 50),  # grace 4: the line ends at token 50, within the grace window -> forced right after it
    (40, 40),  # the cap falls on a line end: forced at once
    (5, 5),  # grace 0
    (0, 0),  # no thinking at all
])
def test_thinking_cap_forces_close_within_the_grace_window(cap, expected_thinking):
    [result] = generate(LINES, TOKENIZER, ["Q:1+1=?\n"], max_new_tokens=expected_thinking + 4,
                        max_thinking_tokens=cap)
    assert result.thinking_capped and result.thinking_tokens == expected_thinking
    assert result.thinking == ("123456789\n" * 6)[:expected_thinking]
    assert result.text == f"{THINK_OPEN}{result.thinking}{THINK_CLOSE}A:Q" and result.answer_tokens == 3


def test_model_closes_thinking_itself_and_eos_ends():
    model = scripted({THINK_OPEN: "1", "1": "2", "2": THINK_CLOSE, THINK_CLOSE: "A", "A": "<eos>"})
    [result] = generate(model, TOKENIZER, ["Q:1+1=?\n"], max_new_tokens=30, max_thinking_tokens=10)
    assert (result.thinking, result.answer, result.finish_reason) == ("12", "A", "eos")
    assert not result.thinking_capped and result.generated_tokens == 5


def test_stop_strings_end_the_answer_and_are_not_streamed():
    pieces = []
    [result] = generate(LINES, TOKENIZER, ["Q:1+1=?\n"], max_new_tokens=40, max_thinking_tokens=3,
                        stop=("QQ", "zz"), stream=lambda i, piece: pieces.append(piece))
    assert (result.answer, result.finish_reason) == ("A:", "stop") and result.answer_tokens == 4
    assert "".join(pieces) == result.text == f"{THINK_OPEN}123{THINK_CLOSE}A:"
    [plain] = generate(LINES, TOKENIZER, [f"Q:1+1=?\n{THINK_CLOSE}"], think=False, max_new_tokens=40, stop=(":Q",))
    assert (plain.text, plain.answer, plain.thinking) == ("A", "A", "")
    [long] = generate(LINES, TOKENIZER, [f"Q:1+1=?\n{THINK_CLOSE}"], think=False, max_new_tokens=6)
    assert (long.answer, long.finish_reason, long.generated_tokens) == ("A:QQQQ", "length", 6)


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus(steered):
    kwargs = dict(budget=SMALL, max_new_tokens=10, max_thinking_tokens=4, temperature=1.5, top_p=0.95)
    first = [r.text for r in generate(steered, TOKENIZER, PROMPTS, seed=3, **kwargs)]
    assert first == [r.text for r in generate(steered, TOKENIZER, PROMPTS, seed=3, **kwargs)]
    greedy = [r.text for r in generate(steered, TOKENIZER, PROMPTS, budget=SMALL, max_new_tokens=10,
                                       max_thinking_tokens=4)]
    assert first != greedy
    nucleus_of_one = dict(kwargs, top_p=1e-6)  # only the most likely token survives: greedy
    assert [r.text for r in generate(steered, TOKENIZER, PROMPTS, seed=3, **nucleus_of_one)] == greedy
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4)
    drawn = sample_next_tokens(logits, temperature=1.0, top_p=0.75, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=4).float() / 4000
    assert counts[2:].sum() == 0 and abs(counts[0] - 0.625) < 0.03  # renormalised over {0.5, 0.3}


def test_bad_arguments_raise_clear_errors(steered):
    good = dict(max_new_tokens=4)
    for kwargs, error, match in [
        (dict(max_new_tokens=0), ValueError, "max_new_tokens=0 must be an int >= 1"),
        (dict(good, temperature=-1.0), ValueError, "temperature"),
        (dict(good, top_p=0.0), ValueError, "top_p"),
        (dict(good, switch="teleport"), ValueError, "switch='teleport'"),
        (dict(good, stop="\n"), TypeError, "sequence of strings"),
        (dict(good, max_thinking_tokens=-1), ValueError, "max_thinking_tokens"),
        (dict(good, think_budget="small"), TypeError, "is a name"),
        (dict(good, budget=Budget(hidden_size=1000)), ValueError, "hidden_size=1000"),
    ]:
        with pytest.raises(error, match=match):
            generate(steered, TOKENIZER, PROMPTS, **kwargs)
    with pytest.raises(TypeError, match="list of strings"):
        generate(steered, TOKENIZER, "Q:1+1=?\n", **good)
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
        generate(steered, TOKENIZER, ["hello"], **good)
    assert generate(steered, TOKENIZER, [], **good) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("elastic")
    # an upper dt limit is not expressible as a NemotronHConfig, so save_elastic writes the project's
    # own format (no slow transformers import in the test)
    parent = tiny_model("M*E-M", seed=5, mamba_dt_limit=(1e-3, 1e4))
    save_elastic(parent, {"full": Budget(), "small": SMALL}, path, tokenizer=TOKENIZER)
    return path


def test_cli_generate_streams_and_exits_zero(checkpoint, monkeypatch, capsys):
    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    code = cli.main(["generate", "--checkpoint", str(checkpoint), "--think-budget", "small", "--answer-budget",
                     "full", "--prompt", "Q:12+3=?", "--max-new-tokens", "8", "--max-thinking-tokens", "3"])
    assert code == 0
    out = "".join(writes)
    assert out.startswith(THINK_OPEN) and len(writes) >= 4  # pieces arrive one by one
    stats = json.loads([line for line in capsys.readouterr().err.splitlines() if line.startswith("{")][-1])
    assert set(stats) >= {"thinking_tokens", "answer_tokens", "thinking_capped", "finish_reason", "seconds"}


def test_cli_generate_reads_prompts_from_stdin(checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Q:1+2=?\n\nQ:30+4=?\n"))
    code = cli.main(["generate", "--checkpoint", str(checkpoint), "--think-budget", "small", "--answer-budget",
                     "full", "--max-new-tokens", "5", "--max-thinking-tokens", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count(THINK_OPEN) == 2  # the empty line is skipped
    stats = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert [entry["thinking_tokens"] for entry in stats] == [2, 2]


def test_cli_generate_rejects_unknown_budget_and_bad_values(checkpoint, capsys):
    base = ["generate", "--checkpoint", str(checkpoint), "--prompt", "Q:1+2=?"]
    assert cli.main(base + ["--think-budget", "tiny", "--answer-budget", "full"]) == 2
    assert "--think-budget 'tiny' is not a budget" in capsys.readouterr().err
    assert cli.main(base + ["--think-budget", "small", "--answer-budget", "full", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens=0" in capsys.readouterr().err
