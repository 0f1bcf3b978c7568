"""Autograd for SSM ops whose backward is PyTorch autograd through their reference, recomputed in
the backward pass (every backend; no kernel of ours computes these gradients)."""

from __future__ import annotations

from typing import Callable

import torch


def register_reference_backward(op, reference: Callable, num_tensors: int) -> None:
    """Make ``op`` differentiable: its first ``num_tensors`` arguments are (optional) tensors, the
    rest up to the trailing backend string are options; ``reference(*tensors, *options)`` returns
    the op's output(s) differentiably."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:num_tensors])
        ctx.options = inputs[num_tensors:-1]
        ctx.num_inputs = len(inputs)

    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        grads: list[torch.Tensor | None] = [None] * ctx.num_inputs
        wanted = [i for i, t in enumerate(saved)
                  if t is not None and ctx.needs_input_grad[i] and t.is_floating_point()]
        if not wanted:
            return tuple(grads)
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(i in wanted)
                      for i, t in enumerate(saved)]
            outputs = reference(*leaves, *ctx.options)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            pairs = [(out, g) for out, g in zip(outputs, grad_outputs)
                     if g is not None and out.requires_grad]
            found = torch.autograd.grad([out for out, _ in pairs], [leaves[i] for i in wanted],
                                        [g for _, g in pairs], allow_unused=True)
        for i, g in zip(wanted, found):
            grads[i] = torch.zeros_like(saved[i]) if g is None else g
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup_context)
