"""Checkpoints: exact round trips, atomic replacement, and refusal of damaged files."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from star_elastic import checkpoint as ckpt


def payload():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(), "step_info": {"stage": 2, "names": ("a", "b"), "x": None}}


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_exact_including_optimizer_int_keys(tmp_path):
    data = payload()
    path = ckpt.save_checkpoint(tmp_path, 7, data)
    assert ckpt.latest_checkpoint(tmp_path) == path
    step, loaded = ckpt.load_checkpoint(path)
    assert step == 7
    assert_same(data, loaded)
    opt = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])  # the structure torch expects survives


def test_keeps_only_the_newest(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"w": torch.ones(2) * step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000002", "step-00000003"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))[1]["w"][0] == 3


@pytest.mark.parametrize("damage,words", [
    (lambda p: (p / ckpt.TENSORS).write_bytes((p / ckpt.TENSORS).read_bytes()[:-9]), "truncated"),
    (lambda p: (p / ckpt.TENSORS).write_bytes(b"\0" + (p / ckpt.TENSORS).read_bytes()[1:]),
     "corrupted"),
    (lambda p: (p / ckpt.STATE).write_text((p / ckpt.STATE).read_text().replace("7", "8")),
     "corrupted"),
    (lambda p: (p / ckpt.MANIFEST).unlink(), "incomplete"),
    (lambda p: (p / ckpt.TENSORS).unlink(), "missing"),
])
def test_damaged_checkpoints_are_refused(tmp_path, damage, words):
    path = ckpt.save_checkpoint(tmp_path, 7, payload())
    damage(path)
    with pytest.raises(ckpt.CheckpointError, match=words):
        ckpt.load_checkpoint(path)


def test_unpicklable_values_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        ckpt.save_checkpoint(tmp_path, 1, {"fn": object()})


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(3)})
    # A process killed inside save (after the staging dir is written, before the rename).
    script = textwrap.dedent(f"""
        import os, torch
        from star_elastic import checkpoint as ckpt
        real_rename = os.rename
        def die(*args):
            os._exit(9)
        os.rename = die
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.ones(3)}})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == 9
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000001"
    assert torch.equal(ckpt.load_checkpoint(latest)[1]["w"], torch.zeros(3))


def test_no_pickle_in_the_files(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 3, payload())
    json.loads((path / ckpt.STATE).read_text())
    assert not any(name.endswith((".pt", ".pkl", ".bin")) for name in os.listdir(path))
