"""Data for elastic distillation and the demo: tokenizers, a synthetic reasoning task, and loaders.

Nothing here downloads anything. Text comes from local files (plain text, JSONL, parquet) or from
memory; tokenizers are the small built-in character tokenizer or a tokenizer saved in a local
directory. The synthetic task writes multi-digit addition as a chain of thought,
``<think>scratchpad</think> answer``, so a model must think before it answers and the thinking
length is controllable (the inference-time budget control of the paper needs exactly that).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Iterable, Sequence

import torch

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPECIAL_TOKENS = (PAD, BOS, EOS, THINK_OPEN, THINK_CLOSE)


class CharTokenizer:
    """A character-level tokenizer with atomic special tokens (``<think>``, ``</think>``, ...).

    Ids: the special tokens first (``<pad>`` is 0), then one id per character of ``alphabet``.
    Characters outside the alphabet are an error, not silently dropped.
    """

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet must not repeat characters")
        self.alphabet = alphabet
        self.tokens = list(SPECIAL_TOKENS) + list(alphabet)
        self._ids = {token: i for i, token in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def bos_id(self) -> int:
        return self._ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    def token_id(self, token: str) -> int:
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        """Text -> ids; special tokens written literally in the text map to their single id."""
        ids, i = [], 0
        while i < len(text):
            for special in SPECIAL_TOKENS:
                if text.startswith(special, i):
                    ids.append(self._ids[special])
                    i += len(special)
                    break
            else:
                char = text[i]
                if char not in self._ids:
                    raise ValueError(f"character {char!r} is not in the tokenizer's alphabet")
                ids.append(self._ids[char])
                i += 1
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        out = []
        for i in ids:
            token = self.tokens[int(i)]
            if skip_special and token in (PAD, BOS, EOS):
                continue
            out.append(token)
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "char_tokenizer.json").write_text(json.dumps({"alphabet": self.alphabet}))

    @classmethod
    def load(cls, directory: str | Path) -> "CharTokenizer":
        return cls(json.loads((Path(directory) / "char_tokenizer.json").read_text())["alphabet"])


ARITHMETIC_ALPHABET = "0123456789+=?c \nQA:"
CHAR_TOKENIZER_NAME = "char_tokenizer.json"
# Files whose presence means a Hugging Face tokenizer is saved in a directory.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                      "spiece.model")


def load_tokenizer(source: str | Path):
    """``"char"`` (the built-in tokenizer for the synthetic task), a directory saved by
    :meth:`CharTokenizer.save`, or a local Hugging Face tokenizer directory (never the hub).

    Raises ``FileNotFoundError`` naming the directory and the files looked for when there is no
    tokenizer, and ``ValueError`` naming a corrupt tokenizer file.
    """
    if str(source) == "char":
        return CharTokenizer(ARITHMETIC_ALPHABET)
    path = Path(source)
    if (path / CHAR_TOKENIZER_NAME).exists():
        try:
            return CharTokenizer.load(path)
        except (ValueError, KeyError, TypeError) as error:  # (a JSONDecodeError is a ValueError)
            raise ValueError(f"{path / CHAR_TOKENIZER_NAME} is corrupt ({error!s}); expected "
                             '{"alphabet": "..."}') from None
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer: {source!r} is neither 'char' nor a local directory")
    if not any((path / name).exists() for name in HF_TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer: {CHAR_TOKENIZER_NAME} is missing (nor is "
                                f"there a Hugging Face tokenizer: {', '.join(HF_TOKENIZER_FILES)})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


# --------------------------------------------------------------------------------------------------
# The synthetic reasoning task: multi-digit addition with a digit-by-digit scratchpad.


@dataclasses.dataclass(frozen=True)
class ArithmeticExample:
    """One problem. ``prompt`` ends where the model starts thinking; ``thinking`` is the
    scratchpad (without the think tags); ``answer`` the final number."""

    prompt: str
    thinking: str
    answer: str

    @property
    def text(self) -> str:
        return f"{self.prompt}{THINK_OPEN}{self.thinking}{THINK_CLOSE}{self.answer}"


def addition_example(a: int, b: int) -> ArithmeticExample:
    """``a + b`` with one scratchpad line per digit, least significant first: ``7+9=16 c1``."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        total = x + y + carry
        terms = f"{x}+{y}" + (f"+{carry}" if carry else "")
        carry = total // 10
        lines.append(f"{terms}={total}" + (f" c{carry}" if carry else ""))
    return ArithmeticExample(prompt=f"Q:{a}+{b}=?\n", thinking="\n".join(lines) + "\n",
                             answer=f"A:{a + b}\n")


def arithmetic_examples(count: int, *, min_digits: int = 2, max_digits: int = 4,
                        seed: int = 0) -> list[ArithmeticExample]:
    """``count`` random addition problems with operands of ``min_digits``..``max_digits`` digits."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    rng = random.Random(seed)

    def operand() -> int:
        digits = rng.randint(min_digits, max_digits)
        return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)

    return [addition_example(operand(), operand()) for _ in range(count)]


def pack_texts(texts: Sequence[str], per_pack: int, *, seed: int = 0) -> list[str]:
    """Whole texts packed ``per_pack`` to a sequence (a random grouping, every text once; a short
    last group), joined by ``<eos><bos>`` so that :func:`encode_batch` frames every text as it
    frames a lone one: the long-context form of the same samples, none of them cut."""
    if per_pack < 1:
        raise ValueError(f"per_pack={per_pack} must be >= 1")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [f"{EOS}{BOS}".join(texts[i] for i in order[start:start + per_pack])
            for start in range(0, len(order), per_pack)]


def parse_answer(completion: str) -> str | None:
    """The number after ``A:`` in a completion, or None when there is none."""
    if "A:" not in completion:
        return None
    tail = completion.split("A:", 1)[1]
    digits = "".join(ch for ch in tail.split("\n", 1)[0] if ch.isdigit())
    return digits or None


# --------------------------------------------------------------------------------------------------
# Loading text and turning it into training tensors.


def load_texts(path: str | Path, *, field: str = "text") -> list[str]:
    """Documents from a local file: ``.txt`` (blank-line separated), ``.jsonl`` (``field`` of each
    record) or ``.parquet`` (column ``field``; needs pyarrow)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".txt":
        return [doc.strip("\n") for doc in path.read_text().split("\n\n") if doc.strip()]
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if field not in record:
                    raise ValueError(f"{path}:{number}: record has no field {field!r}")
                texts.append(record[field])
        return texts
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from error
        table = pq.read_table(path, columns=[field])
        return [str(v) for v in table.column(field).to_pylist()]
    raise ValueError(f"unsupported data file type {path.suffix!r} (use .txt, .jsonl or .parquet)")


def encode_batch(tokenizer, texts: Sequence[str], seq_len: int, *,
                 truncate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (tokens (N, seq_len) int64, mask (N, seq_len) bool of real tokens).

    Each text becomes ``<bos> text <eos>``, right-padded to ``seq_len``. A longer one is cut to
    ``seq_len`` tokens, or, with ``truncate=False``, refused (``ValueError``): a reasoning sample
    cut short has lost its answer.
    """
    tokens = torch.full((len(texts), seq_len), tokenizer.pad_id, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
        if len(ids) > seq_len and not truncate:
            raise ValueError(f"text {row} has {len(ids)} tokens with <bos> and <eos>, more than "
                             f"seq_len={seq_len}: {text[:60]!r}...")
        ids = ids[:seq_len]
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens, tokens != tokenizer.pad_id
