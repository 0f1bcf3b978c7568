"""No MoE op reads device data on the host (DESIGN §8), checked without a GPU.

Every public MoE op and every CUDA launcher is called on fake CUDA tensors
(``FakeTensorMode``: shapes and devices, no data). Any ``.item()``, ``.tolist()``, ``bool(t)``,
``nonzero`` or data-sized output on device data raises there, so an op that passes never stalls
decode on a sync and can be captured in a CUDA graph. The GPU is simulated for backend selection
only (an sm_90 capability); the private ``_C`` ops run their fake impls.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import star_elastic_kernels as sek
from star_elastic_kernels import _extension
from star_elastic_kernels.moe import align as align_ops
from star_elastic_kernels.moe import ffn as ffn_ops
from star_elastic_kernels.moe import gemm as gemm_ops
from star_elastic_kernels.moe import route as route_ops

needs_ext = pytest.mark.skipif(not _extension.has_op("_moe_grouped_gemm"),
                               reason="the CUDA extension is not built here (its fake impls and "
                                      "the cuda backend need it)")

E, K, D, F, FS = 16, 4, 64, 48, 32


@pytest.fixture
def fake_hopper(monkeypatch):
    """Fake-tensor mode on a pretend sm_90 device (backend selection asks its capability)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with FakeTensorMode():
        yield


def layer(tokens, activation="relu2", dtype=torch.bfloat16):
    glu = 2 if activation == "silu_glu" else 1
    cuda = dict(device="cuda")
    return dict(
        hidden=torch.empty(tokens, D, dtype=dtype, **cuda),
        w_up=torch.empty(E, glu * F, D, dtype=dtype, **cuda),
        w_down=torch.empty(E, D, F, dtype=dtype, **cuda),
        weights=torch.empty(tokens, K, dtype=torch.float32, **cuda),
        ids=torch.empty(tokens, K, dtype=torch.int32, **cuda),
        shared_up=torch.empty(glu * FS, D, dtype=dtype, **cuda),
        shared_down=torch.empty(D, FS, dtype=dtype, **cuda),
        logits=torch.empty(tokens, E, dtype=torch.float32, **cuda),
        bias=torch.empty(E, dtype=torch.float32, **cuda),
        mask=torch.empty(E, dtype=torch.bool, **cuda),
    )


BACKENDS = [None, "cuda", "triton"]


@needs_ext
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens", [1, 37])
def test_public_ops_on_fake_cuda_tensors(fake_hopper, backend, tokens):
    t = layer(tokens)
    weights, ids = sek.moe_route(t["logits"], top_k=K, correction_bias=t["bias"],
                                 expert_mask=t["mask"], scaling=2.5, backend=backend)
    assert weights.shape == (tokens, K) and ids.dtype == torch.int32
    weights, ids = sek.moe_route(t["logits"], top_k=K, num_experts=12, backend=backend)
    aligned = sek.moe_align(ids, E, 16, backend=backend)
    assert aligned.sorted_slots.shape == (tokens * K,) and aligned.block_offsets.shape == (E + 1,)
    ends = torch.empty(E, dtype=torch.int32, device="cuda")
    x = torch.empty(tokens * K, D, dtype=torch.bfloat16, device="cuda")
    out = sek.grouped_gemm(x, t["w_up"][:, :40, :], ends, backend=backend)
    assert out.shape == (tokens * K, 40)
    for activation in ("relu2", "silu_glu"):
        t = layer(tokens, activation)
        out = sek.moe_ffn(t["hidden"][:, :56], t["w_up"], t["w_down"], t["weights"], t["ids"],
                          activation=activation, ffn_width=40, hidden_width=56,
                          shared_up=t["shared_up"], shared_down=t["shared_down"], shared_width=24,
                          scaling=2.5, backend=backend)
        assert out.shape == (tokens, 56) and out.dtype == torch.bfloat16


@needs_ext
@pytest.mark.parametrize("tokens", [0, 1, 300])
def test_cuda_launchers_on_fake_cuda_tensors(fake_hopper, tokens):
    t = layer(tokens)
    weights, ids = route_ops._route_cuda(t["logits"], t["bias"], t["mask"], K, False, E, True, 2.5)
    assert weights.shape == ids.shape == (tokens, K)
    sorted_slots, counts, expert_offsets, block_offsets = align_ops._align_cuda(t["ids"], E, 64)
    assert sorted_slots.shape == (tokens * K,) and counts.shape == (E,)
    ends = torch.empty(E, dtype=torch.int32, device="cuda")
    x = torch.empty(tokens * K, D, dtype=torch.bfloat16, device="cuda")
    assert gemm_ops._grouped_gemm_cuda(x, t["w_up"][:, :40], ends).shape == (tokens * K, 40)
    for activation in ("relu2", "silu_glu"):
        t = layer(tokens, activation)
        for shared in (False, True):
            out = ffn_ops._moe_ffn_cuda(
                t["hidden"], t["w_up"], t["w_down"], t["weights"], t["ids"],
                t["shared_up"] if shared else None, t["shared_down"] if shared else None,
                activation, 40, D, 24 if shared else 0, 2.5)
            assert out.shape == (tokens, D)


def test_the_detector_catches_a_host_read(fake_hopper):
    """The mechanism the tests above rely on: the host check that validate=True (or a CPU tensor)
    asks for reads device data, and fake tensors refuse exactly that."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    from star_elastic_kernels.moe import _checks

    ids = torch.empty(5, K, dtype=torch.int32, device="cuda")
    with pytest.raises(DataDependentOutputException):
        _checks.ids_in_range(ids, E)
    assert not _checks.on_host_now(ids, validate=True)  # fake: the wrappers skip it


# --- no silent cliffs: when auto leaves the cuda backend, it says so once (moe/_fallback.py) -------


@pytest.fixture
def fresh_fallbacks(monkeypatch):
    from star_elastic_kernels.moe import _fallback

    monkeypatch.setattr(_fallback, "_taken", {})
    return _fallback


@needs_ext
def test_a_misaligned_parent_falls_back_once_with_a_warning(fake_hopper, fresh_fallbacks):
    cuda = dict(device="cuda", dtype=torch.bfloat16)
    hidden = torch.empty(3, 18, **cuda)  # parent rows of 18 values: not 16-byte aligned
    w_up, w_down = torch.empty(E, F, 18, **cuda), torch.empty(E, 18, F, **cuda)
    weights = torch.empty(3, K, dtype=torch.float32, device="cuda")
    ids = torch.empty(3, K, dtype=torch.int32, device="cuda")
    with pytest.warns(sek.StarElasticWarning, match="moe_ffn: the cuda backend cannot run"):
        sek.moe_ffn(hidden, w_up, w_down, weights, ids)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: counted, not warned again
        sek.moe_ffn(hidden, w_up, w_down, weights, ids)
    (reason, count), = fresh_fallbacks.report()["taken"]["moe_ffn"].items()
    assert count == 2 and "multiples of 8" in reason
    with pytest.raises(sek.BackendUnavailableError, match="multiples of 8"):
        sek.moe_ffn(hidden, w_up, w_down, weights, ids, backend="cuda")


@needs_ext
def test_elastic_widths_off_every_tile_stay_on_cuda(fake_hopper, fresh_fallbacks):
    import warnings

    t = layer(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sek.moe_ffn(t["hidden"][:, :21].contiguous(), t["w_up"], t["w_down"], t["weights"],
                          t["ids"], ffn_width=13, hidden_width=21, shared_up=t["shared_up"],
                          shared_down=t["shared_down"], shared_width=9, backend="cuda")
    assert out.shape == (7, 21)
    assert fresh_fallbacks.report()["taken"] == {}
    with pytest.warns(sek.StarElasticWarning, match="grouped_gemm"):  # N=13 is the output's stride
        sek.grouped_gemm(torch.empty(8, D, dtype=torch.bfloat16, device="cuda"), t["w_up"][:, :13],
                         torch.empty(E, dtype=torch.int32, device="cuda"))


def test_info_lists_the_fallback_rules_and_the_ones_taken(fresh_fallbacks):
    from star_elastic_kernels import info

    fresh_fallbacks._taken[("moe_ffn", "a test reason")] = 3
    collected = info.collect()
    assert collected["moe_fallbacks"]["taken"] == {"moe_ffn": {"a test reason": 3}}
    text = info.render(collected)
    assert "MoE fallbacks (cuda -> triton):" in text and "grouped_gemm: cuda -> triton" in text
    assert "taken in this process: moe_ffn x3: a test reason" in text
