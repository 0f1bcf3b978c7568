"""Interop with transformers' ``nemotron_h`` (``NemotronHForCausalLM``).

Our parameter names are transformers' without the ``model.`` prefix of the backbone, so a state
dict converts by renaming keys; shapes and layouts are identical.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from .config import ElasticConfig
from .model import ElasticModel

__all__ = ["from_hf", "to_hf", "hf_state_dict"]


def _nemotron_h_class():
    """transformers' ``NemotronHForCausalLM``, imported without its import-time noise.

    Importing transformers' modeling code imports torchao when it is installed, and torchao's
    import logs deprecation notices through torch's pytree logger (and may warn). They concern
    torchao's maintainers, not our users, so they are held back for the duration of the import.
    """
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            from transformers import NemotronHForCausalLM
    finally:
        pytree_log.setLevel(level)
    return NemotronHForCausalLM


def _to_ours(name: str) -> str:
    return name[len("model.") :] if name.startswith("model.") else name


def _to_hf(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def from_hf(model_or_path) -> ElasticModel:
    """An ``ElasticModel`` with the weights of a ``NemotronHForCausalLM`` or of a local checkpoint dir.

    Paths must be local directories (the hub is never contacted). The result is a copy: later
    in-place changes (``permute_``) do not touch the transformers model. Keeps every tensor's dtype.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        if not os.path.isdir(model_or_path):
            raise ValueError(f"{model_or_path!r} is not a local checkpoint directory")
        # use_kernels=False: transformers >= 5.25 otherwise swaps layers for Hub kernels it may fetch.
        model_or_path = _nemotron_h_class().from_pretrained(model_or_path, local_files_only=True, use_kernels=False)
    hf_model = model_or_path
    config = ElasticConfig.from_hf(hf_model.config)
    with torch.device("meta"):
        model = ElasticModel(config)
    state = {_to_ours(name): tensor.detach().clone() for name, tensor in hf_model.state_dict().items()}
    unexpected = set(state) - set(model.state_dict())
    if unexpected:
        raise ValueError(f"checkpoint has weights this model does not: {sorted(unexpected)[:5]}")
    # assign=True keeps each tensor's dtype, e.g. transformers' fp32 router next to bf16 experts.
    model.load_state_dict(state, strict=True, assign=True)
    return model


def hf_state_dict(model: ElasticModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict under transformers' names."""
    return {_to_hf(name): tensor for name, tensor in model.state_dict().items()}


def to_hf(model: ElasticModel):
    """An equal ``NemotronHForCausalLM`` (copies the weights). Needs uniform per-layer widths."""
    hf_config = model.config.to_hf()
    hf_model = _nemotron_h_class()(hf_config)
    state = {name: tensor.detach().clone() for name, tensor in hf_state_dict(model).items()}
    hf_model.load_state_dict(state, strict=True, assign=True)  # keeps our dtypes
    return hf_model.eval()
