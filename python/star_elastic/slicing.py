"""Zero-shot slicing: cut a budget out of the parent as a smaller dense model, and export it.

``slice_model`` copies exactly the parent entries the masked forward reads (the same views), so the
sliced model's logits equal the parent's at that budget. ``export`` writes a transformers
``nemotron_h`` checkpoint when the child's widths are uniform across layers, and the project's own
format (``star_elastic_config.json`` + ``model.safetensors``) otherwise; ``load`` reads either.

An export appears complete or not at all: it is written into a hidden sibling directory and
renamed into place, so a failed write (a full disk, an interrupt) leaves nothing under the final
name and a failed re-export leaves the previous export as it was. ``load`` checks the directory
first (configs parse, every safetensors file is whole) and names the file at fault, before any
weights load.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

import torch

from star_elastic_kernels.reference.ssm import active_head_index

from .budget import Budget, LayerWidths, ResolvedBudget
from .config import PER_LAYER_FIELDS, ElasticConfig
from .model import ElasticModel

__all__ = ["sliced_config", "slice_model", "export", "load", "check_saved_model", "ELASTIC_CONFIG_NAME"]

ELASTIC_CONFIG_NAME = "star_elastic_config.json"
HF_CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# What export writes (transformers' save_pretrained included); only such a directory is replaced.
EXPORT_FILE_NAMES = (ELASTIC_CONFIG_NAME, HF_CONFIG_NAME, "generation_config.json", WEIGHTS_NAME,
                     WEIGHTS_INDEX_NAME)
_WEIGHT_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _child_sizes(config: ElasticConfig, widths: LayerWidths) -> dict[str, int]:
    """The LayerSpec sizes of a kept layer after slicing (only the fields of its kind)."""
    sizes = {
        "mamba_num_heads": config.mamba_num_groups * widths.mamba_heads_per_group,
        "mamba_head_dim": widths.mamba_head_dim,
        "num_attention_heads": config.num_key_value_heads * widths.attention_heads_per_group,
        "mlp_intermediate_size": widths.mlp_width,
        "moe_num_experts": widths.moe_experts,
        "moe_intermediate_size": widths.moe_expert_width,
        "moe_shared_intermediate_size": widths.moe_shared_width,
    }
    return {name: sizes[name] for name in PER_LAYER_FIELDS[widths.kind]}


def sliced_config(config: ElasticConfig, plan: ResolvedBudget) -> ElasticConfig:
    """The child's config: kept layers only, global sizes from the first layer of each kind,
    ``layer_overrides`` wherever a layer differs (so uniform budgets give uniform configs)."""
    kept = [widths for widths in plan.layers if widths is not None]
    if not kept:
        raise ValueError("the budget skips every layer; a sliced model needs at least one")
    per_layer = [_child_sizes(config, widths) for widths in kept]
    global_sizes = {}
    for sizes in per_layer:
        for name, value in sizes.items():
            global_sizes.setdefault(name, value)
    overrides = {}
    for index, sizes in enumerate(per_layer):
        differing = {name: value for name, value in sizes.items() if value != global_sizes[name]}
        if differing:
            overrides[index] = differing
    fields = config.to_dict()
    fields.update(global_sizes)
    fields.update(
        layer_pattern="".join(widths.kind for widths in kept),
        hidden_size=plan.hidden_size,
        layer_overrides=overrides,
        width_granularity=1,
    )
    return ElasticConfig.from_dict(fields)


def _mamba_tensors(mixer, widths: LayerWidths, d: int) -> dict[str, torch.Tensor]:
    H, P, G, N = mixer.num_heads, mixer.head_dim, mixer.num_groups, mixer.state_size
    k, p, inner = widths.mamba_heads_per_group, widths.mamba_head_dim, H * P
    heads = active_head_index(H, G, k, device=mixer.A_log.device)
    channels = (heads[:, None] * P + torch.arange(p, device=heads.device)).reshape(-1)  # in [0, inner)
    bc = torch.arange(2 * inner, 2 * inner + 2 * G * N, device=heads.device)
    rows = torch.cat([channels, inner + channels, bc, 2 * inner + 2 * G * N + heads])
    conv_channels = torch.cat([channels, bc - inner])
    tensors = {
        "in_proj.weight": mixer.in_proj.weight[rows, :d],
        "conv1d.weight": mixer.conv1d.weight[conv_channels],
        "dt_bias": mixer.dt_bias[heads],
        "A_log": mixer.A_log[heads],
        "D": mixer.D[heads],
        "norm.weight": mixer.norm.weight[channels],
        "out_proj.weight": mixer.out_proj.weight[:d, channels],
    }
    if mixer.conv1d.bias is not None:
        tensors["conv1d.bias"] = mixer.conv1d.bias[conv_channels]
    return tensors


def _attention_tensors(mixer, widths: LayerWidths, d: int) -> dict[str, torch.Tensor]:
    kv, hd, q = mixer.num_kv_heads, mixer.head_dim, widths.attention_heads_per_group
    per_group = mixer.num_heads // kv
    return {
        "q_proj.weight": mixer.q_proj.weight.view(kv, per_group, hd, -1)[:, :q, :, :d].reshape(-1, d),
        "k_proj.weight": mixer.k_proj.weight[:, :d],
        "v_proj.weight": mixer.v_proj.weight[:, :d],
        "o_proj.weight": mixer.o_proj.weight.view(-1, kv, per_group, hd)[:d, :, :q].reshape(d, -1),
    }


def _mlp_tensors(mixer, width: int, d: int) -> dict[str, torch.Tensor]:
    return {"up_proj.weight": mixer.up_proj.weight[:width, :d], "down_proj.weight": mixer.down_proj.weight[:d, :width]}


def _moe_tensors(mixer, widths: LayerWidths, d: int) -> dict[str, torch.Tensor]:
    e, r = widths.moe_experts, widths.moe_expert_width
    tensors = {
        "gate.weight": mixer.gate.weight[:e, :d],
        "experts.up_proj": mixer.experts.up_proj[:e, :r, :d],
        "experts.down_proj": mixer.experts.down_proj[:e, :d, :r],
    }
    if mixer.gate.e_score_correction_bias is not None:
        tensors["gate.e_score_correction_bias"] = mixer.gate.e_score_correction_bias[:e]
    if mixer.shared_experts is not None:
        for name, tensor in _mlp_tensors(mixer.shared_experts, widths.moe_shared_width, d).items():
            tensors["shared_experts." + name] = tensor
    return tensors


def _block_tensors(block, widths: LayerWidths, d: int) -> dict[str, torch.Tensor]:
    if widths.kind == "M":
        mixer_tensors = _mamba_tensors(block.mixer, widths, d)
    elif widths.kind == "*":
        mixer_tensors = _attention_tensors(block.mixer, widths, d)
    elif widths.kind == "-":
        mixer_tensors = _mlp_tensors(block.mixer, widths.mlp_width, d)
    else:
        mixer_tensors = _moe_tensors(block.mixer, widths, d)
    return {"norm.weight": block.norm.weight[:d], **{"mixer." + k: v for k, v in mixer_tensors.items()}}


@torch.no_grad()
def slice_model(model: ElasticModel, budget: Budget | ResolvedBudget | None) -> ElasticModel:
    """A new dense ``ElasticModel`` holding copies of only the weights ``budget`` keeps.

    Its full-budget logits equal ``model(input_ids, budget)``. Skipped layers disappear from the
    pattern. The parent is not modified.
    """
    plan = model.resolve_budget(budget)
    d = plan.hidden_size
    child_config = sliced_config(model.config, plan)
    state = {
        "embeddings.weight": model.embeddings.weight[:, :d],
        "norm_f.weight": model.norm_f.weight[:d],
        "lm_head.weight": model.lm_head.weight[:, :d],
    }
    kept = [(block, widths) for block, widths in zip(model.layers, plan.layers) if widths is not None]
    for child_index, (block, widths) in enumerate(kept):
        for name, tensor in _block_tensors(block, widths, d).items():
            state[f"layers.{child_index}.{name}"] = tensor
    with torch.device("meta"):
        child = ElasticModel(child_config)
    child.load_state_dict({name: tensor.clone().contiguous() for name, tensor in state.items()}, strict=True, assign=True)
    return child.train(model.training)


def _hf_expressible(config: ElasticConfig) -> bool:
    has_moe = "E" in config.layer_pattern
    moe_ok = not has_moe or (config.moe_shared_intermediate_size > 0 and config.moe_correction_bias)
    dt_ok = config.mamba_dt_limit[0] > 0 and config.mamba_dt_limit[1] == float("inf")
    return config.is_uniform and moe_ok and dt_ok


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike, *, also_replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``path`` to write into; when the block ends without an
    error it replaces ``path`` in one rename, else it is deleted and ``path`` is left as it was.

    An existing ``path`` is replaced only when it is empty or holds nothing but the files an export
    writes (``EXPORT_FILE_NAMES``, weight shards, and ``also_replaces``): a directory holding other
    files raises ``ValueError`` naming them, before anything is written.
    """
    final = Path(os.path.abspath(path))
    if final.exists():
        if not final.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory")
        known = set(EXPORT_FILE_NAMES) | set(also_replaces)
        foreign = sorted(entry.name for entry in final.iterdir()
                         if not (entry.is_file() and (entry.name in known or _WEIGHT_SHARD.fullmatch(entry.name))))
        if foreign:
            raise ValueError(f"{path} holds files an export does not write ({', '.join(foreign[:5])}); "
                             "export into a new or empty directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        yield staging
        for file in staging.iterdir():  # on disk before the rename makes them visible
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            previous = final.with_name(f".{final.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(final, previous)
            try:
                os.rename(staging, final)
            except BaseException:
                os.rename(previous, final)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only still there when something failed


def write_model(child: ElasticModel, directory: Path) -> str:
    """Write ``child`` (whole, unsliced) into the existing ``directory``; returns the format written."""
    if _hf_expressible(child.config):
        child.to_hf().save_pretrained(directory)
        return "nemotron_h"
    from safetensors.torch import save_file

    with open(directory / ELASTIC_CONFIG_NAME, "w") as f:
        json.dump({"format": "star_elastic", "config": child.config.to_dict()}, f, indent=2, sort_keys=True)
    save_file({name: tensor.contiguous() for name, tensor in child.state_dict().items()},
              str(directory / WEIGHTS_NAME))
    return "star_elastic"


def export(model: ElasticModel, budget: Budget | ResolvedBudget | None, path: str | os.PathLike) -> str:
    """Slice ``model`` at ``budget`` and write it to the directory ``path``.

    Returns ``"nemotron_h"`` when it wrote a transformers checkpoint (uniform widths; reload with
    ``NemotronHForCausalLM.from_pretrained(path)``), ``"star_elastic"`` when it wrote the project's
    own format (per-layer widths; reload with :func:`load`).

    Atomic: ``path`` holds the complete export or, when writing fails (``OSError``, e.g. a full
    disk), whatever it held before. An existing ``path`` must be empty or a previous export (else
    ``ValueError``, before anything is written); it is replaced as a whole.
    """
    with staged_directory(path) as staging:
        return write_model(slice_model(model, budget), staging)


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is corrupt: not text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is corrupt: not valid JSON ({error.msg} at line {error.lineno}, "
                         f"column {error.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} is corrupt: expected a JSON object, found {type(data).__name__}")
    return data


def _check_safetensors(file: Path) -> None:
    """Raise unless ``file`` is a whole safetensors file (header parses, data covers every tensor)."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise FileNotFoundError(f"{file.parent} is incomplete: {file.name} is missing")
    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except SafetensorError as error:
        raise ValueError(f"{file} is truncated or corrupt ({error})") from None


def check_saved_model(path: str | os.PathLike) -> str:
    """Check that ``path`` holds a model :func:`load` can read, without loading any weights.

    Returns the format (``"star_elastic"`` or ``"nemotron_h"``). Raises ``FileNotFoundError``
    (``path`` or a file it needs does not exist), ``NotADirectoryError``, or ``ValueError`` (a
    config that does not parse or is not a model's, a truncated or corrupt safetensors file), each
    naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    if (path / ELASTIC_CONFIG_NAME).exists():
        meta = _read_json(path / ELASTIC_CONFIG_NAME)
        if meta.get("format") != "star_elastic" or not isinstance(meta.get("config"), dict):
            raise ValueError(f"{path / ELASTIC_CONFIG_NAME} is not a star_elastic model config "
                             f"(format {meta.get('format')!r})")
        _check_safetensors(path / WEIGHTS_NAME)
        return "star_elastic"
    if not (path / HF_CONFIG_NAME).exists():
        raise FileNotFoundError(f"{path} holds no model: neither {ELASTIC_CONFIG_NAME} nor "
                                f"{HF_CONFIG_NAME} is there")
    model_type = _read_json(path / HF_CONFIG_NAME).get("model_type")
    if model_type != "nemotron_h":
        raise ValueError(f"{path / HF_CONFIG_NAME} describes a {model_type!r} model, not nemotron_h")
    if (path / WEIGHTS_INDEX_NAME).exists():
        weight_map = _read_json(path / WEIGHTS_INDEX_NAME).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path / WEIGHTS_INDEX_NAME} is corrupt: it has no weight_map")
        for shard in sorted(set(weight_map.values())):
            _check_safetensors(path / shard)
    elif (path / WEIGHTS_NAME).exists() or not any(path.glob("pytorch_model*.bin")):
        _check_safetensors(path / WEIGHTS_NAME)  # (pickled .bin weights are transformers' to check)
    return "nemotron_h"


def load(path: str | os.PathLike) -> ElasticModel:
    """Load a directory written by :func:`export` (either format) or any local ``nemotron_h`` checkpoint.

    The directory is checked first (:func:`check_saved_model`): a missing, truncated or corrupt
    file raises an error naming it before any weights load.
    """
    if check_saved_model(path) == "nemotron_h":
        return ElasticModel.from_hf(path)
    from safetensors.torch import load_file

    config_file = Path(path) / ELASTIC_CONFIG_NAME
    try:
        config = ElasticConfig.from_dict(_read_json(config_file)["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_file}: {error}") from None
    with torch.device("meta"):
        model = ElasticModel(config)
    model.load_state_dict(load_file(os.path.join(path, WEIGHTS_NAME)), strict=True, assign=True)
    return model
