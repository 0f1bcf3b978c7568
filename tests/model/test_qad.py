"""Quantization-aware distillation: fake-quantized students, exact slices, and loss going down."""

import pytest
import torch

import star_elastic_kernels as sek
from star_elastic import Budget, ElasticModel, data
from star_elastic.losses import kd_loss
from star_elastic.qad import apply_fake_quantization, quantized_weight_names, remove_fake_quantization
from star_elastic.train import ElasticDistillationTrainer, Stage, TrainConfig, make_student
from tests.model.helpers import toy_config

BUDGETS = {"full": Budget(), "half": Budget(hidden_size=32, mlp_width=64, moe_expert_width=16,
                                            mamba_head_dim=16, moe_experts=4)}


def qad_config():
    return toy_config(vocab_size=32, width_granularity=16, mamba_head_dim=32)


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_fake_quantized_parent_slices_are_the_childs_quantized_weights(fmt):
    torch.manual_seed(0)
    model = ElasticModel(qad_config())
    names = quantized_weight_names(model)
    assert any("experts.up_proj" in n for n in names) and any("q_proj" in n for n in names)
    assert not any("embeddings" in n or "lm_head" in n or "gate" in n for n in names)
    apply_fake_quantization(model, fmt)
    mlp = model.layers[2].mixer
    parent = mlp.up_proj.parametrizations.weight.original
    scale = mlp.up_proj.parametrizations.weight[0].global_scale
    quantize = sek.fake_quantize_nvfp4 if fmt == "nvfp4" else sek.fake_quantize_fp8
    child = quantize(parent[:64, :32].detach(), scale)
    assert torch.equal(mlp.up_proj.weight[:64, :32].detach(), child)
    assert not torch.equal(mlp.up_proj.weight.detach(), parent.detach())  # really quantized
    remove_fake_quantization(model)
    assert torch.equal(model.layers[2].mixer.up_proj.weight, parent)


def test_nvfp4_needs_block_aligned_inputs():
    with pytest.raises(ValueError, match="in_features % 16"):
        apply_fake_quantization(ElasticModel(toy_config(hidden_size=40, width_granularity=8)), "nvfp4")
    with pytest.raises(ValueError, match="format"):
        apply_fake_quantization(ElasticModel(qad_config()), "int4")


def test_qad_lowers_every_budgets_loss_against_the_same_budget_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = ElasticModel(qad_config())
    with torch.no_grad():  # larger weights: sharper logits, so 4-bit error shows in the loss
        for parameter in teacher.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(4.0)
    student = apply_fake_quantization(make_student(teacher), "nvfp4")
    tokenizer = data.load_tokenizer("char")
    tokens, mask = data.encode_batch(tokenizer, [e.text for e in data.arithmetic_examples(64, seed=2)], 24)
    held, held_mask = data.encode_batch(tokenizer, [e.text for e in data.arithmetic_examples(8, seed=3)], 24)
    config = TrainConfig(stages=[Stage("qad", 8, 24, 8)], budget_names=tuple(BUDGETS),
                         budget_targets=(1.0, 0.5), lr=3e-4, warmup_steps=1, out_dir=str(tmp_path),
                         progress=False)
    trainer = ElasticDistillationTrainer(teacher, student, None, tokens, mask, config, budgets=BUDGETS,
                                         teacher_at_same_budget=True)

    def losses():
        with torch.no_grad():
            return {n: float(kd_loss(student(held, b), teacher(held, b), mask=held_mask))
                    for n, b in BUDGETS.items()}

    before = losses()
    assert all(v > 0 for v in before.values())
    trainer.train()
    after = losses()
    for name in BUDGETS:
        assert after[name] < before[name], (name, before, after)
    assert trainer.trained_budgets() == BUDGETS
    with pytest.raises(ValueError, match="must be the config's"):
        ElasticDistillationTrainer(teacher, student, None, tokens, mask, config,
                                   budgets={"half": BUDGETS["half"], "full": Budget()})


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_exported_quantized_parent_serves_every_budget_exactly(tmp_path, fmt):
    import json

    from safetensors.torch import load_file
    from star_elastic.qad import export_quantized, quantize_parent
    from star_elastic_kernels.quant.checkpoint import load_quantized

    torch.manual_seed(1)
    model = apply_fake_quantization(ElasticModel(qad_config()), fmt)
    export_quantized(model, BUDGETS, fmt, tmp_path)
    loaded, _, _ = load_quantized(tmp_path / "quantized.safetensors")
    assert set(loaded) == set(quantize_parent(model, fmt))
    mlp = model.layers[2].mixer.up_proj  # (128, 64): the "half" budget keeps 64 rows, 32 inputs
    name = "layers.2.mixer.up_proj"
    served = loaded[name].slice(64, 32).dequantize(torch.float32)
    assert torch.equal(served, mlp.weight[:64, :32].detach())  # the weights QAD trained with
    experts = model.layers[3].mixer.experts.down_proj  # (E, D, F) -> per-expert matrices
    expert_served = loaded["layers.3.mixer.experts.down_proj.3"].slice(32, 16).dequantize(torch.float32)
    assert torch.equal(expert_served, experts[3, :32, :16].detach())
    high = load_file(tmp_path / "high_precision.safetensors")
    assert "embeddings.weight" in high and not any("parametrizations" in k for k in high)
    assert json.loads((tmp_path / "budgets.json").read_text())["half"]["hidden_size"] == 32
    with pytest.raises(ValueError, match="no fake-quantized weights"):
        quantize_parent(ElasticModel(qad_config()), fmt)


def test_qad_from_the_command_line(tmp_path):
    from star_elastic import cli
    from star_elastic.elastic_checkpoint import save_elastic
    from star_elastic_kernels.quant.checkpoint import load_quantized

    torch.manual_seed(4)
    save_elastic(ElasticModel(qad_config()), BUDGETS, tmp_path / "elastic")
    (tmp_path / "qad.toml").write_text(f"""
[model]
checkpoint = "{tmp_path / 'elastic'}"
[data]
count = 32
min_digits = 1
max_digits = 1
max_len = 28
[train]
budget_names = ["full", "half"]
budget_targets = [1.0, 0.5]
lr = 1e-4
warmup_steps = 1
progress = false
[[train.stages]]
name = "qad"
steps = 2
seq_len = 28
batch_size = 4
[qad]
format = "fp8"
""")
    assert cli.main(["train", "--config", str(tmp_path / "qad.toml"), "--out", str(tmp_path / "run")]) == 0
    weights, _, _ = load_quantized(tmp_path / "run" / "quantized" / "quantized.safetensors")
    assert weights["layers.0.mixer.in_proj"].data.dtype == torch.float8_e4m3fn
