"""Generation with per-phase budgets: a small submodel thinks, a large one answers (paper §10).

``generate(model, tokenizer, prompts, think_budget=..., answer_budget=..., max_new_tokens=...)``:

1. **Thinking** at ``think_budget``: ``<think>`` is appended to each prompt (``think=True``), the
   prompt is prefilled and tokens are decoded until the model writes ``</think>``. With
   ``max_thinking_tokens`` the thinking is capped: once the cap is reached, ``</think>`` is forced
   as soon as the current line ends, at most ``grace = int(0.1 * cap)`` tokens later (the "budget
   control" of NIM: thinking tokens <= cap + grace).
2. **Switch** to ``answer_budget``: ``switch="reprefill"`` (default) prefills
   ``prompt + <think> + thinking + </think>`` with the answering budget on a fresh cache — exactly
   what a fresh run of the answering budget on that context computes. ``switch="transplant"`` keeps
   the thinking budget's cache instead (Mamba states sliced or zero-padded to the answering
   budget's widths, attention KV reused) and only feeds ``</think>`` at the answering budget:
   cheaper, lossy; its accuracy cost is for the caller to measure.
3. **Answer** at ``answer_budget`` until ``<eos>``, a stop string or ``max_new_tokens``.

Batched: prompts of different lengths are left-padded and prefilled together (padding is masked
in attention and keeps the Mamba states at zero, see :mod:`star_elastic.cache`); a row that leaves a
phase early is frozen (its states stop changing) while the others go on, so each row generates
what it would generate alone. Greedy at ``temperature=0``; else temperature + top-p sampling from a
generator seeded with ``seed`` (reproducible for the same call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .budget import Budget, ResolvedBudget
from .cache import InferenceCache
from .data import THINK_CLOSE, THINK_OPEN

__all__ = ["GenerationResult", "generate", "sample_next_tokens", "grace_tokens"]

SWITCH_MODES = ("reprefill", "transplant")


@dataclass
class GenerationResult:
    """One prompt's generation.

    ``text``: everything generated after the prompt, as streamed: ``<think>thinking</think>answer``
    (with ``think=True``; ``</think>`` only if the thinking closed) or the answer alone.
    ``thinking``: the thinking without its tags; ``answer``: the text after ``</think>`` (a matched
    stop string and ``<eos>`` are not part of it). Token counts: ``thinking_tokens`` between the tags,
    ``answer_tokens`` sampled after ``</think>`` (stop-string and ``<eos>`` tokens included),
    ``generated_tokens`` every token produced (tags, forced ones and ``<eos>`` included; at most
    ``max_new_tokens``). Seconds are the wall time of the phase for the whole batch of the call (rows
    share them): ``thinking_seconds`` prompt prefill + thinking decode at the thinking budget,
    ``switch_seconds`` the re-prefill (or transplant step, or the prompt prefill without thinking)
    at the answering budget, ``answer_seconds`` the answer decode. ``thinking_capped``: the cap was
    reached and ``</think>`` was forced. ``finish_reason``: ``"eos"``, ``"stop"`` or ``"length"``.
    """

    prompt: str
    text: str = ""
    thinking: str = ""
    answer: str = ""
    thinking_tokens: int = 0
    answer_tokens: int = 0
    generated_tokens: int = 0
    thinking_seconds: float = 0.0
    switch_seconds: float = 0.0
    answer_seconds: float = 0.0
    thinking_capped: bool = False
    finish_reason: str = "length"

    @property
    def total_seconds(self) -> float:
        return self.thinking_seconds + self.switch_seconds + self.answer_seconds


def grace_tokens(max_thinking_tokens: int) -> int:
    """Tokens the thinking may run past its cap to finish the current line: 10% of the cap, rounded down."""
    return int(0.1 * max_thinking_tokens)


def sample_next_tokens(logits: torch.Tensor, *, temperature: float = 0.0, top_p: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (b, V) -> next token ids (b,) int64: argmax at ``temperature == 0``, else a sample from
    ``softmax(logits / temperature)`` restricted to the smallest set of tokens whose probability
    reaches ``top_p`` (the most likely token is always kept)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # probability of the more likely tokens
        sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# Tokenizer access that works for the built-in CharTokenizer and for transformers tokenizers.


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # CharTokenizer.encode takes only the text
        return list(tokenizer.encode(text))


def _single_token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` if the tokenizer has it as one token, else None."""
    if hasattr(tokenizer, "token_id"):
        try:
            return int(tokenizer.token_id(token))
        except KeyError:
            return None
    ids = _encode(tokenizer, token)
    return ids[0] if len(ids) == 1 else None


def _vocab_size(tokenizer) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        return int(tokenizer.vocab_size)


# --------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """Mutable per-prompt state while generating."""

    index: int
    prompt_ids: list[int]
    phase: str  # "think" | "answer" | "done"; "switch" = waiting for the answer phase
    thinking_ids: list[int] = field(default_factory=list)
    answer_ids: list[int] = field(default_factory=list)
    closed: bool = False  # the thinking has its </think>
    last_token: int | None = None  # the token to feed next in the current phase
    result: GenerationResult = None  # type: ignore[assignment]
    streamed: int = 0  # characters of result.text already streamed


def _check_arguments(prompts, max_new_tokens, max_thinking_tokens, temperature, top_p, stop, switch):
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of strings (wrap a single prompt in a list)")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] is {type(prompt).__name__}, not str")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    if max_thinking_tokens is not None and (not isinstance(max_thinking_tokens, int) or max_thinking_tokens < 0):
        raise ValueError(f"max_thinking_tokens={max_thinking_tokens!r} must be None or an int >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
    if isinstance(stop, str):
        raise TypeError("stop must be a sequence of strings, e.g. ('\\n',), not a string")
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
    if switch not in SWITCH_MODES:
        raise ValueError(f"switch={switch!r} must be one of {SWITCH_MODES}")


def _resolve(model, budget, name: str) -> ResolvedBudget:
    if isinstance(budget, str):
        raise TypeError(f"{name}={budget!r} is a name; pass the Budget (load_elastic returns them by name)")
    if budget is not None and not isinstance(budget, (Budget, ResolvedBudget)):
        raise TypeError(f"{name} must be a Budget, ResolvedBudget or None, not {type(budget).__name__}")
    return model.resolve_budget(budget)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, budget: Budget | ResolvedBudget | None = None,
             think_budget: Budget | ResolvedBudget | None = None,
             answer_budget: Budget | ResolvedBudget | None = None, max_new_tokens: int,
             max_thinking_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
             stop: Sequence[str] = (), seed: int = 0, switch: str = "reprefill", think: bool = True,
             add_bos: bool = True, stream: Callable[[int, str], None] | None = None) -> list[GenerationResult]:
    """Generate a completion for every prompt; returns one :class:`GenerationResult` per prompt, in order.

    ``model``: an :class:`~star_elastic.model.ElasticModel` (the parent; budgets run in place).
    ``budget``: the default of both phases; ``think_budget`` / ``answer_budget`` override it per phase
    (``None`` everywhere = the whole parent). ``think``: run the thinking phase (``<think>`` is
    appended to prompts that do not already end with it); ``False`` = one phase at the answering
    budget. ``max_new_tokens``: tokens produced per prompt over both phases. ``max_thinking_tokens``:
    the thinking cap (``None`` = none; 0 closes the thinking at once). ``stop``: strings that end a
    sequence when they appear in its answer (the answer is cut before the match). ``add_bos``:
    start each prompt with the tokenizer's ``bos`` token (as training sequences do).
    ``stream(prompt_index, text)``: called with each new piece of a row's ``text`` as it is generated
    (pieces that could be the start of a stop string are held back until resolved).
    Logits of token ids the tokenizer does not have (a padded vocabulary) are never sampled.
    """
    _check_arguments(prompts, max_new_tokens, max_thinking_tokens, temperature, top_p, stop, switch)
    think_plan = _resolve(model, think_budget if think_budget is not None else budget, "think_budget")
    answer_plan = _resolve(model, answer_budget if answer_budget is not None else budget, "answer_budget")
    if not prompts:
        return []
    open_id, close_id = _single_token_id(tokenizer, THINK_OPEN), _single_token_id(tokenizer, THINK_CLOSE)
    if think and (open_id is None or close_id is None):
        raise ValueError(f"think=True needs a tokenizer with {THINK_OPEN} and {THINK_CLOSE} as single tokens "
                         "(use think=False for a tokenizer without them)")
    eos_id = getattr(tokenizer, "eos_id", getattr(tokenizer, "eos_token_id", None))
    bos_id = getattr(tokenizer, "bos_id", getattr(tokenizer, "bos_token_id", None))
    pad_id = getattr(tokenizer, "pad_id", getattr(tokenizer, "pad_token_id", None)) or 0
    vocab = model.config.vocab_size
    tokenizer_vocab = min(_vocab_size(tokenizer), vocab)
    device = model.embeddings.weight.device if hasattr(model, "embeddings") else next(model.parameters()).device
    generator = None if temperature == 0 else torch.Generator(device=device).manual_seed(seed)

    rows = []
    for i, prompt in enumerate(prompts):
        ids = _encode(tokenizer, prompt)
        if add_bos and bos_id is not None and (not ids or ids[0] != bos_id):
            ids = [bos_id] + ids
        if think and (not ids or ids[-1] != open_id):
            ids = ids + [open_id]
        if not ids:
            raise ValueError(f"prompts[{i}] is empty (and the tokenizer has no bos token to start it)")
        if max(ids) >= vocab:
            raise ValueError(f"prompts[{i}] has token id {max(ids)} >= the model's vocab_size {vocab}")
        result = GenerationResult(prompt=prompt, text=THINK_OPEN if think else "")
        rows.append(_Row(index=i, prompt_ids=ids, phase="think" if think else "switch", result=result))

    def emit(row: _Row, final: bool = False) -> None:
        """Stream the new part of the row's text, holding back a possible start of a stop string."""
        res = row.result
        res.text = (f"{THINK_OPEN}{res.thinking}{THINK_CLOSE if row.closed else ''}" if think else "") + res.answer
        safe = len(res.text)
        if not final and row.phase == "answer":
            safe -= _partial_stop_length(res.answer, stop)
        if stream is not None and safe > row.streamed:
            stream(row.index, res.text[row.streamed : safe])
        row.streamed = max(row.streamed, safe)

    def finish(row: _Row, reason: str) -> None:
        row.phase, row.result.finish_reason = "done", reason
        emit(row, final=True)

    def sample(logits: torch.Tensor) -> list[int]:
        logits = logits.float()
        if tokenizer_vocab < vocab:  # ids the tokenizer cannot decode
            logits[:, tokenizer_vocab:] = float("-inf")
        return sample_next_tokens(logits, temperature=temperature, top_p=top_p, generator=generator).tolist()

    def run_phase(phase: str, plan: ResolvedBudget, cache: InferenceCache, logits: torch.Tensor,
                  batch: list[_Row], on_token: Callable[[_Row, int], None]) -> None:
        """Sample, handle and feed tokens until no row of ``batch`` (the cache's rows) is in ``phase``."""
        while True:
            tokens = sample(logits)
            feed = []
            for row, token in zip(batch, tokens):
                if row.phase == phase:
                    on_token(row, token)
                feed.append(row.phase == phase)  # still in the phase: its new token goes in
            if not any(feed):
                return
            ids = torch.tensor([[row.last_token if f else pad_id] for row, f in zip(batch, feed)], device=device)
            if not all(feed):
                cache.set_input_mask(torch.tensor(feed, device=device)[:, None])  # freeze the others
            logits = model(ids, plan, cache=cache)[:, -1]

    def prefill(plan: ResolvedBudget, contexts: list[list[int]]) -> tuple[InferenceCache, torch.Tensor]:
        """Left-padded batched prefill on a fresh cache -> (cache, last logits (b, V))."""
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(contexts), width), dtype=torch.bool, device=device)
        for r, context in enumerate(contexts):
            ids[r, width - len(context):] = torch.tensor(context, device=device)
            mask[r, width - len(context):] = True
        cache = InferenceCache.for_model(model, len(contexts))
        cache.set_input_mask(mask)
        return cache, model(ids, plan, cache=cache)[:, -1]

    def produced(row: _Row) -> bool:
        """Count one produced token; True (and the row is finished) when it was the last allowed."""
        row.result.generated_tokens += 1
        return row.result.generated_tokens >= max_new_tokens

    # ---- phase 1: thinking ------------------------------------------------------------------------
    grace = None if max_thinking_tokens is None else grace_tokens(max_thinking_tokens)

    def must_close(row: _Row) -> bool:
        count = len(row.thinking_ids)
        if max_thinking_tokens is None or count < max_thinking_tokens:
            return False
        line_done = count == 0 or "\n" in tokenizer.decode([row.thinking_ids[-1]])
        return line_done or count >= max_thinking_tokens + grace

    def on_thinking_token(row: _Row, token: int) -> None:
        if must_close(row):
            token, row.result.thinking_capped = close_id, True
        last = produced(row)
        if token == close_id:
            row.closed, row.phase = True, "switch"
            emit(row)
            if last:
                finish(row, "length")
            return
        if token == eos_id:
            finish(row, "eos")
            return
        row.thinking_ids.append(token)
        row.result.thinking = tokenizer.decode(row.thinking_ids)
        row.result.thinking_tokens = len(row.thinking_ids)
        row.last_token = token
        emit(row)
        if last:
            finish(row, "length")

    think_cache = None
    if think:
        for row in rows:
            emit(row)  # the <think> opening
        start = _now(device)
        think_cache, logits = prefill(think_plan, [row.prompt_ids for row in rows])
        run_phase("think", think_plan, think_cache, logits, rows, on_thinking_token)
        elapsed = _now(device) - start
        for row in rows:
            row.result.thinking_seconds = elapsed

    # ---- switch -----------------------------------------------------------------------------------
    answering = [r for r, row in enumerate(rows) if row.phase == "switch"]
    if not answering:
        return [row.result for row in rows]
    batch = [rows[r] for r in answering]
    start = _now(device)
    if think and (switch == "transplant" or answer_plan == think_plan):
        # Continue the thinking cache (exact when the budgets are equal): feed </think> at the answer budget.
        cache = think_cache.select_rows(answering) if len(answering) < len(rows) else think_cache
        logits = model(torch.full((len(batch), 1), close_id, device=device), answer_plan, cache=cache)[:, -1]
    else:
        contexts = [row.prompt_ids + (row.thinking_ids + [close_id] if think else []) for row in batch]
        cache, logits = prefill(answer_plan, contexts)
    switch_seconds = _now(device) - start
    for row in batch:
        row.phase = "answer"
        row.result.switch_seconds = switch_seconds

    # ---- phase 2: answer --------------------------------------------------------------------------
    def on_answer_token(row: _Row, token: int) -> None:
        last = produced(row)
        row.result.answer_tokens += 1
        if token == eos_id:
            finish(row, "eos")
            return
        row.answer_ids.append(token)
        answer = tokenizer.decode(row.answer_ids)
        cut = min((answer.find(s) for s in stop if s in answer), default=-1)
        row.result.answer = answer if cut < 0 else answer[:cut]
        row.last_token = token
        if cut >= 0:
            finish(row, "stop")
        elif last:
            finish(row, "length")
        else:
            emit(row)

    start = _now(device)
    run_phase("answer", answer_plan, cache, logits, batch, on_answer_token)
    answer_seconds = _now(device) - start
    for row in batch:
        row.result.answer_seconds = answer_seconds
    return [row.result for row in rows]


def _partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
