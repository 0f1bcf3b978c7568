"""Tokenizers, the synthetic reasoning task and the file loaders."""

import json

import pytest
import torch

from star_elastic import data


def test_char_tokenizer_round_trip_and_atomic_special_tokens():
    tok = data.load_tokenizer("char")
    text = data.addition_example(58, 67).text
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.token_id(data.THINK_OPEN)) == 1
    assert ids.count(tok.token_id(data.THINK_CLOSE)) == 1
    assert len(ids) == len(text) - (len(data.THINK_OPEN) - 1) - (len(data.THINK_CLOSE) - 1)
    with pytest.raises(ValueError, match="'x' is not in the tokenizer's alphabet"):
        tok.encode("1x2")


def test_tokenizer_save_and_load(tmp_path):
    tok = data.CharTokenizer("ab\n")
    tok.save(tmp_path)
    loaded = data.load_tokenizer(tmp_path)
    assert loaded.tokens == tok.tokens
    with pytest.raises(FileNotFoundError):
        data.load_tokenizer(tmp_path / "missing")


@pytest.mark.parametrize("a,b", [(0, 0), (5, 7), (999, 1), (1234, 8766), (47, 305)])
def test_scratchpad_adds_correctly(a, b):
    example = data.addition_example(a, b)
    assert data.parse_answer(example.answer) == str(a + b)
    # Replaying the scratchpad digit by digit gives the sum.
    digits = [int(line.split("=")[1].split()[0]) % 10 for line in example.thinking.splitlines()]
    final_carry = example.thinking.splitlines()[-1].endswith("c1")
    value = sum(d * 10**i for i, d in enumerate(digits)) + (10 ** len(digits) if final_carry else 0)
    assert value == a + b


def test_examples_are_seeded_and_within_digit_range():
    first = data.arithmetic_examples(20, min_digits=2, max_digits=3, seed=4)
    assert first == data.arithmetic_examples(20, min_digits=2, max_digits=3, seed=4)
    assert first != data.arithmetic_examples(20, min_digits=2, max_digits=3, seed=5)
    for example in first:
        a, b = example.prompt[2:].split("=")[0].split("+")
        assert 2 <= len(a) <= 3 and 2 <= len(b) <= 3
    with pytest.raises(ValueError, match="min_digits"):
        data.arithmetic_examples(1, min_digits=3, max_digits=2)


def test_parse_answer():
    assert data.parse_answer("12+5=17\n</think>A:17\n") == "17"
    assert data.parse_answer("no answer here") is None
    assert data.parse_answer("A:\n") is None


def test_load_texts_from_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\nsecond doc\n")
    assert data.load_texts(tmp_path / "a.txt") == ["first doc\nline two", "second doc"]
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"text": "y"}))
    assert data.load_texts(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="c.jsonl:1: record has no field 'text'"):
        data.load_texts(tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="unsupported data file type"):
        (tmp_path / "d.csv").write_text("x")
        data.load_texts(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError):
        data.load_texts(tmp_path / "none.txt")


def test_load_texts_from_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "e.parquet")
    assert data.load_texts(tmp_path / "e.parquet") == ["p", "q"]


def test_encode_batch_pads_and_truncates():
    tok = data.load_tokenizer("char")
    tokens, mask = data.encode_batch(tok, ["12", "1234567"], seq_len=6)
    assert tokens.shape == (2, 6) and tokens.dtype == torch.long
    assert tokens[0].tolist() == [tok.bos_id, *tok.encode("12"), tok.eos_id, tok.pad_id, tok.pad_id]
    assert mask[0].tolist() == [True, True, True, True, False, False]
    assert tokens[1].tolist() == [tok.bos_id, *tok.encode("12345")]


def test_pack_texts_frames_every_text_whole_and_once():
    texts = [e.text for e in data.arithmetic_examples(7, min_digits=1, max_digits=3, seed=2)]
    packs = data.pack_texts(texts, 3, seed=1)
    assert [len(p.split("<eos><bos>")) for p in packs] == [3, 3, 1]
    assert sorted(part for p in packs for part in p.split("<eos><bos>")) == sorted(texts)
    tokenizer = data.load_tokenizer("char")
    tokens, mask = data.encode_batch(tokenizer, packs, 200, truncate=False)
    ids = tokens[0][mask[0]].tolist()
    # <bos> text <eos> <bos> text <eos> <bos> text <eos>: each text framed as a lone one would be
    assert ids.count(tokenizer.bos_id) == 3 and ids.count(tokenizer.eos_id) == 3
    with pytest.raises(ValueError, match="per_pack"):
        data.pack_texts(texts, 0)
    with pytest.raises(ValueError, match="more than seq_len"):
        data.encode_batch(tokenizer, packs, 20, truncate=False)
