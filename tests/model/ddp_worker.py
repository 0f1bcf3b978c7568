"""Run a few elastic-distillation steps under torchrun (or alone) and save what the test compares.

Usage: [torchrun --nproc_per_node N] ddp_worker.py STRATEGY OUT_DIR
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from star_elastic.cli import build_data, build_parent, init_distributed, load_config_file
from star_elastic.router import ElasticRouter
from star_elastic.train import ElasticDistillationTrainer, TrainConfig, _full_state_dict, make_student

strategy, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
spec = load_config_file(os.path.join(os.path.dirname(__file__), "../../configs/tiny_train.toml"))
spec["train"].update(out_dir=out, checkpoint_every=0, progress=False)
for stage in spec["train"]["stages"]:
    stage["steps"] = 2
config = TrainConfig.from_dict(spec["train"])
wrap = init_distributed(strategy)
teacher = build_parent(spec["model"])
tokens, mask, _ = build_data(spec["data"], teacher.config.vocab_size)
student = make_student(teacher)
with torch.no_grad():  # a student that differs from the teacher, so every budget has a loss
    generator = torch.Generator().manual_seed(7)
    for parameter in student.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
router = ElasticRouter(student.config, config.budget_names, config.budget_targets)
trainer = ElasticDistillationTrainer(teacher, student, router, tokens, mask, config, wrap=wrap)
history = trainer.train()
rank = trainer.rank
weights = _full_state_dict(trainer.objective)
save_file({k: v.detach().contiguous() for k, v in weights.items()},
          os.path.join(out, f"weights-rank{rank}.safetensors"))
if rank == 0:
    with open(os.path.join(out, "history.json"), "w") as handle:
        json.dump(history, handle)
if dist.is_initialized():
    dist.destroy_process_group()
