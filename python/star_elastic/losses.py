"""Distillation losses: forward KL to a teacher at a temperature, and next-token cross-entropy.

Logits are (batch, seq, vocab); ``mask`` (batch, seq) marks the positions that count. Both losses
are means over the counted positions (0 when none count), computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _per_sample_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean(dim=1)
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _kd_per_token(student_logits, teacher_logits, temperature):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1) * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
            temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL, KL(p_teacher || p_student), of the softened distributions, times T².

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.). The
    teacher's logits are detached: the teacher is frozen. Mean over the counted tokens.
    """
    return _masked_mean(_kd_per_token(student_logits, teacher_logits, temperature), mask)


def kd_loss_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                       temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`kd_loss`, but one value per sequence (batch,): the mean over its counted tokens."""
    return _per_sample_mean(_kd_per_token(student_logits, teacher_logits, temperature), mask)


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of predicting ``tokens[:, t+1]`` from ``logits[:, t]``.

    ``mask`` (batch, seq) marks real tokens; a position counts when its target is real.
    """
    return _masked_mean(_ce_per_token(logits, tokens), None if mask is None else mask[:, 1:])


def next_token_ce_per_sample(logits: torch.Tensor, tokens: torch.Tensor,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`next_token_ce`, one value per sequence (batch,)."""
    return _per_sample_mean(_ce_per_token(logits, tokens), None if mask is None else mask[:, 1:])


def _ce_per_token(logits, tokens):
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
