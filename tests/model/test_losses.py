"""Distillation losses and schedules against direct formulas."""

import math

import pytest
import torch

from star_elastic import losses, schedules


def test_kd_loss_is_forward_kl_times_t_squared():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    for t in (1.0, 2.0):
        p = torch.softmax(teacher.double() / t, -1)
        q = torch.softmax(student.double() / t, -1)
        expected = (p * (p.log() - q.log())).sum(-1).mean() * t * t
        assert torch.allclose(losses.kd_loss(student, teacher, temperature=t).double(), expected,
                              atol=1e-6)
    assert losses.kd_loss(teacher, teacher).abs() < 1e-6


def test_kd_loss_mask_and_frozen_teacher():
    student = torch.randn(1, 4, 5, requires_grad=True)
    teacher = torch.randn(1, 4, 5, requires_grad=True)
    mask = torch.tensor([[True, True, False, False]])
    full = losses.kd_loss(student[:, :2], teacher[:, :2])
    assert torch.allclose(losses.kd_loss(student, teacher, mask=mask), full)
    losses.kd_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        losses.kd_loss(student, teacher[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_loss(student, teacher, temperature=0.0)


def test_next_token_ce_matches_manual_shift():
    logits = torch.randn(2, 5, 9)
    tokens = torch.randint(0, 9, (2, 5))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 9), tokens[:, 1:].reshape(-1))
    assert torch.allclose(losses.next_token_ce(logits, tokens), expected, atol=1e-6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    kept = torch.cat([torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="none"),
                      torch.nn.functional.cross_entropy(logits[1, :2], tokens[1, 1:3], reduction="none")])
    assert torch.allclose(losses.next_token_ce(logits, tokens, mask), kept.mean(), atol=1e-6)


def test_schedules():
    assert schedules.warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert schedules.warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert schedules.warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert schedules.warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert schedules.warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert schedules.linear(0, 11, 1.0, 0.05) == 1.0
    assert schedules.linear(10, 11, 1.0, 0.05) == pytest.approx(0.05)
    assert schedules.linear(5, 11, 1.0, 10.0) == pytest.approx(5.5)
    assert schedules.linear(50, 11, 1.0, 10.0) == pytest.approx(10.0)
    assert math.isclose(schedules.linear(3, 1, 1.0, 2.0), 2.0)


def test_per_sample_losses_are_per_sequence_means():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    tokens = torch.randint(0, 6, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kd = losses.kd_loss_per_sample(student, teacher, temperature=2.0, mask=mask)
    ce = losses.next_token_ce_per_sample(student, tokens, mask)
    for i in range(3):
        n = int(mask[i].sum())
        assert torch.allclose(kd[i], losses.kd_loss(student[i:i + 1, :n], teacher[i:i + 1, :n],
                                                    temperature=2.0), atol=1e-6)
        if n > 1:
            assert torch.allclose(ce[i], losses.next_token_ce(student[i:i + 1, :n], tokens[i:i + 1, :n]),
                                  atol=1e-6)
    assert ce[2] == 0  # no counted target
