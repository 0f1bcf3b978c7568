"""Star Elastic model layer: the elastic hybrid Mamba-2 / attention / MLP / MoE model.

``ElasticConfig`` (architecture) -> ``ElasticModel`` (parent weights, forward at any ``Budget``)
-> ``estimate_importance`` / ``permute_`` (make every submodel a prefix) -> ``slice_model`` /
``export`` (zero-shot children) and ``parameter_count`` (cost model). Runs on the pure-PyTorch
references of ``star_elastic_kernels``.
"""

from .budget import Budget, LayerBudget, LayerWidths, ResolvedBudget
from .config import ElasticConfig, LayerSpec
from .importance import Importance, estimate_importance, permute_, rank_layers
from .model import ElasticModel
from .params import ParameterCount, parameter_count
from .slicing import export, load, slice_model
from .cache import InferenceCache
from .elastic_checkpoint import load_elastic, save_elastic
from .generation import GenerationResult, generate
from .router import ElasticRouter
from .train import ElasticDistillationTrainer, Stage, TrainConfig

__all__ = [
    "Budget",
    "ElasticConfig",
    "ElasticDistillationTrainer",
    "ElasticModel",
    "ElasticRouter",
    "GenerationResult",
    "InferenceCache",
    "Importance",
    "LayerBudget",
    "LayerSpec",
    "LayerWidths",
    "ParameterCount",
    "ResolvedBudget",
    "Stage",
    "TrainConfig",
    "estimate_importance",
    "export",
    "generate",
    "load",
    "load_elastic",
    "parameter_count",
    "permute_",
    "rank_layers",
    "save_elastic",
    "slice_model",
]
