"""Launches per moe_ffn forward on the cuda backend, counted at the op level without a GPU.

Each private ``star_elastic::_moe_*`` op launches exactly one kernel (csrc/moe/bindings.cpp), and
every other op that would launch one (a copy, a fill, an elementwise torch op) is counted too:
only allocations and views are free. The launcher runs on fake CUDA tensors at the Nemotron Nano
v3 layer shape (E=128, top-6, D=2688, F=1856, shared expert 3712), decode and prefill sizes.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from star_elastic_kernels import _extension
from star_elastic_kernels.moe import ffn as ffn_ops
from star_elastic_kernels.moe import gemm as gemm_ops

pytestmark = pytest.mark.skipif(not _extension.has_op("_moe_ffn_plan"),
                                reason="the CUDA extension (with the moe_ffn ops) is not built")

E, K, D, F, FS = 128, 6, 2688, 1856, 3712
aten = torch.ops.aten
FREE = (aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty, aten.detach, aten.alias)


class LaunchCounter(TorchDispatchMode):
    """Records every op that can run a kernel: all but allocations, views, metadata queries
    (prim::) and ops without a tensor argument (host arithmetic such as the workspace sizes)."""

    def __init__(self):
        super().__init__()
        self.launches: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        touches_tensors = any(isinstance(v, torch.Tensor)
                              for v in torch.utils._pytree.tree_leaves((args, kwargs)))
        free = func.is_view or func.overloadpacket in FREE or func.namespace == "prim"
        if touches_tensors and not free:
            self.launches.append(func.name())
        return func(*args, **(kwargs or {}))


def count_launches(tokens, activation, shared, ffn_width=F, hidden_width=D, shared_width=FS):
    glu = 2 if activation == "silu_glu" else 1
    with FakeTensorMode():
        cuda = dict(device="cuda", dtype=torch.bfloat16)
        hidden = torch.empty(tokens, hidden_width, **cuda)
        w_up, w_down = torch.empty(E, glu * F, D, **cuda), torch.empty(E, D, F, **cuda)
        weights = torch.empty(tokens, K, dtype=torch.float32, device="cuda")
        ids = torch.empty(tokens, K, dtype=torch.int32, device="cuda")
        shared_up = torch.empty(glu * FS, D, **cuda) if shared else None
        shared_down = torch.empty(D, FS, **cuda) if shared else None
        with LaunchCounter() as counter:
            out = ffn_ops._moe_ffn_cuda(hidden, w_up, w_down, weights, ids, shared_up, shared_down,
                                        activation, ffn_width, hidden_width,
                                        shared_width if shared else 0, 2.5)
        assert out.shape == (tokens, hidden_width)
    return counter.launches


ROUTED = ["star_elastic::_moe_ffn_plan", "star_elastic::_moe_ffn_gather",
          "star_elastic::_moe_ffn_gemm", "star_elastic::_moe_ffn_gemm",
          "star_elastic::_moe_ffn_combine"]


@pytest.mark.parametrize("tokens", [1, 4, 64, 512, 8192])
@pytest.mark.parametrize("shared", [False, True])
def test_relu2_forward_is_five_launches(tokens, shared):
    """Routed experts and the shared expert together: plan, gather, up GEMM (ReLU^2 fused), down
    GEMM, combine (routing weights, scaling and the shared row fused)."""
    assert count_launches(tokens, "relu2", shared) == ROUTED


def test_relu2_forward_at_elastic_widths_is_five_launches():
    """Half the neurons and channels, widths off any tile multiple: still five, no fallback."""
    assert count_launches(16, "relu2", True, ffn_width=931, hidden_width=1341,
                          shared_width=1857) == ROUTED


@pytest.mark.parametrize("shared", [False, True])
def test_silu_glu_forward_is_six_launches(shared):
    """SiLU-GLU adds the value GEMM (silu(gate) * value in its epilogue), no activation kernel."""
    assert count_launches(16, "silu_glu", shared) == ROUTED[:2] + ["star_elastic::_moe_ffn_gemm"] + ROUTED[2:]


def test_the_counter_counts_torch_ops_that_launch():
    """A counter that could not see a stray launch would prove nothing."""
    with FakeTensorMode():
        x = torch.empty(4, 8, device="cuda")
        with LaunchCounter() as counter:
            y = torch.empty_like(x)
            x[:2].t()
            y.zero_()
            (x + 1).contiguous()
    assert counter.launches == ["aten::zero_", "aten::add.Tensor"]


@pytest.mark.parametrize("rows,schedule", [
    (6, gemm_ops.SCHEDULE_SWAP_AB),             # T=1, top-6: one row per expert
    (384, gemm_ops.SCHEDULE_SWAP_AB),           # T=64: 3 rows per expert
    (3072, gemm_ops.SCHEDULE_SWAP_AB),          # T=512: 24, still within one 32-token tile
    (12800, gemm_ops.SCHEDULE_PINGPONG),        # 100 rows per expert
    (49152, gemm_ops.SCHEDULE_COOPERATIVE),     # T=8192: 384 rows per expert
    (0, gemm_ops.SCHEDULE_SWAP_AB),
])
def test_schedule_by_rows_per_expert(rows, schedule):
    assert gemm_ops.schedule_for(rows, E) == schedule
