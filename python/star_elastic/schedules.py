"""Schedules of the elastic run: learning rates (warmup + cosine) and the router's Gumbel
temperature (1.0 -> 0.05) and logit scale (1.0 -> 10.0), as functions of the step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine to
    ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def linear(step: int, total_steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps - 1`` (and after), linearly."""
    if total_steps <= 1:
        return end
    progress = min(max(step, 0) / (total_steps - 1), 1.0)
    return start + (end - start) * progress
