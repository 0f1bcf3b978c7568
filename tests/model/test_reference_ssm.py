"""The pure-PyTorch Mamba-2 references: against transformers' chunked SSD, and the nesting invariant."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHRMSNormGated, mamba2_chunk_scan

from star_elastic_kernels.reference.ssm import (
    active_head_index,
    causal_conv1d,
    gated_rmsnorm,
    ssd_scan,
    ssd_state_update,
)

H, P, G, N = 8, 6, 2, 5  # 4 heads per group


def _inputs(b=2, l=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(x=r(b, l, H, P), dt=r(b, l, H), A=-torch.rand(H, generator=g) - 0.1, B=r(b, l, G, N),
                C=r(b, l, G, N), D=r(H), z=r(b, l, H, P), dt_bias=r(H) * 0.5)


def _slice_heads(t, k, p=None, dim=2):
    """Explicit copy of the group-aware slice along ``dim`` (and the first p channels of the next dim)."""
    heads = active_head_index(H, G, k)
    out = t.index_select(dim, heads)
    return out if p is None else out.narrow(dim + 1, 0, p).contiguous()


def test_scan_matches_transformers_chunked_ssd():
    a = _inputs()
    ours, final = ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], dt_bias=a["dt_bias"],
                           dt_softplus=True, dt_limit=(1e-3, float("inf")), return_final_states=True)
    theirs, their_final = mamba2_chunk_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=4, D=a["D"],
                                            dt_bias=a["dt_bias"], dt_softplus=True, dt_limit=(1e-3, float("inf")),
                                            return_final_states=True)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final, their_final, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k,p", [(4, 6), (3, 6), (2, 4), (1, 1)])
def test_scan_slice_equals_sliced_copies(k, p):
    a = _inputs(seed=1)
    D_hp = torch.randn(H, P)
    x, z, dt = _slice_heads(a["x"], k, p), _slice_heads(a["z"], k, p), _slice_heads(a["dt"], k)
    init = torch.randn(2, G * k, p, N)
    elastic = ssd_scan(x, dt, a["A"], a["B"], a["C"], D=D_hp, z=z, dt_bias=a["dt_bias"], dt_softplus=True,
                       initial_states=init, heads_per_group=k, head_dim=p, return_final_states=True)
    heads = active_head_index(H, G, k)
    dense = ssd_scan(x, dt, a["A"][heads].clone(), a["B"], a["C"], D=D_hp[heads, :p].clone(), z=z,
                     dt_bias=a["dt_bias"][heads].clone(), dt_softplus=True, initial_states=init,
                     return_final_states=True)
    for got, want in zip(elastic, dense):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_scan_z_gate_and_state_continuation():
    a = _inputs(l=10, seed=2)
    full = ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"], dt_softplus=True)
    y1, s1 = ssd_scan(*(a[n][:, :6] for n in "x dt".split()), a["A"], a["B"][:, :6], a["C"][:, :6], D=a["D"],
                      z=a["z"][:, :6], dt_softplus=True, return_final_states=True)
    y2 = ssd_scan(a["x"][:, 6:], a["dt"][:, 6:], a["A"], a["B"][:, 6:], a["C"][:, 6:], D=a["D"], z=a["z"][:, 6:],
                  dt_softplus=True, initial_states=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, atol=1e-5, rtol=1e-5)
    ungated = ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], dt_softplus=True)
    torch.testing.assert_close(full, ungated * F.silu(a["z"]), atol=1e-5, rtol=1e-5)


def test_scan_varlen_equals_separate_runs():
    a = _inputs(b=1, l=9, seed=3)
    cu = torch.tensor([0, 4, 9])
    y, finals = ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], dt_softplus=True, cu_seqlens=cu,
                         return_final_states=True)
    for i, (s, e) in enumerate([(0, 4), (4, 9)]):
        part, final = ssd_scan(a["x"][:, s:e], a["dt"][:, s:e], a["A"], a["B"][:, s:e], a["C"][:, s:e], D=a["D"],
                               dt_softplus=True, return_final_states=True)
        torch.testing.assert_close(y[:, s:e], part)
        torch.testing.assert_close(finals[i : i + 1], final)


def test_decode_step_continues_prefill_and_touches_only_the_slice():
    k, p = 3, 4
    a = _inputs(b=2, l=7, seed=4)
    x, z, dt = _slice_heads(a["x"], k, p), _slice_heads(a["z"], k, p), _slice_heads(a["dt"], k)
    kw = dict(D=a["D"], dt_bias=a["dt_bias"], dt_softplus=True, heads_per_group=k, head_dim=p)
    y_all = ssd_scan(x, dt, a["A"], a["B"], a["C"], z=z, **kw)
    _, state6 = ssd_scan(x[:, :6], dt[:, :6], a["A"], a["B"][:, :6], a["C"][:, :6], z=z[:, :6],
                         return_final_states=True, **kw)
    cache = torch.full((3, H, P, N), 7.0)  # parent layout, one spare slot
    heads = active_head_index(H, G, k)
    slots = torch.tensor([2, 0])
    cache[slots[:, None], heads[None, :], :p] = state6
    before = cache.clone()
    y = ssd_state_update(cache, x[:, 6], dt[:, 6], a["A"], a["B"][:, 6], a["C"][:, 6], z=z[:, 6],
                         state_indices=slots, **kw)
    torch.testing.assert_close(y, y_all[:, 6], atol=1e-5, rtol=1e-5)
    touched = torch.zeros_like(cache, dtype=torch.bool)
    touched[slots[:, None], heads[None, :], :p] = True
    assert torch.equal(cache[~touched], before[~touched])


def test_conv1d_slice_equals_dense_conv_on_sliced_weights():
    k, p, w = 3, 4, 4
    conv_dim = H * P + 2 * G * N
    weight, bias = torch.randn(conv_dim, w), torch.randn(conv_dim)
    heads = active_head_index(H, G, k)
    x_channels = (heads[:, None] * P + torch.arange(p)).reshape(-1)
    channels = torch.cat([x_channels, torch.arange(H * P, conv_dim)])
    x = torch.randn(2, 9, len(channels))
    y, state = causal_conv1d(x, weight, bias, num_heads=H, num_groups=G, heads_per_group=k, head_dim=p,
                             return_final_states=True)
    padded = F.pad(x.transpose(1, 2), (w - 1, 0))
    want = F.silu(F.conv1d(padded, weight[channels, None, :], bias[channels], groups=len(channels)))
    torch.testing.assert_close(y, want.transpose(1, 2))
    torch.testing.assert_close(state, x.transpose(1, 2)[:, :, -(w - 1):])
    # continuing from the final state equals running the longer sequence
    x2 = torch.randn(2, 3, len(channels))
    kw = dict(num_heads=H, num_groups=G, heads_per_group=k, head_dim=p)
    y2 = causal_conv1d(x2, weight, bias, initial_states=state, **kw)
    torch.testing.assert_close(y2, causal_conv1d(torch.cat([x, x2], 1), weight, bias, **kw)[:, 9:])


@pytest.mark.parametrize("k,p", [(4, 6), (2, 3)])
def test_gated_rmsnorm_slice_equals_transformers_norm_on_sliced_weight(k, p):
    weight = torch.randn(H * P)
    y, z = torch.randn(2, 5, G * k * p), torch.randn(2, 5, G * k * p)
    got = gated_rmsnorm(y, z, weight, eps=1e-5, group_size=H * P // G, heads_per_group=k, head_dim=p, num_heads=H)
    sliced = weight.view(G, H // G, P)[:, :k, :p].reshape(-1)
    norm = NemotronHRMSNormGated(G * k * p, group_size=k * p, eps=1e-5)
    norm.weight.data.copy_(sliced)
    torch.testing.assert_close(got, norm(y, z))


def test_bad_inputs_raise_clear_errors():
    a = _inputs()
    with pytest.raises(ValueError, match="heads_per_group"):
        ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], heads_per_group=5)
    with pytest.raises(ValueError, match="not divisible"):
        ssd_scan(a["x"][:, :, :7], a["dt"][:, :, :7], a["A"][:7], a["B"], a["C"])
    with pytest.raises(ValueError, match="head_dim"):
        ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], D=torch.randn(H, 4), head_dim=6)
    with pytest.raises(ValueError, match="dt has shape"):
        ssd_scan(a["x"], a["dt"][:, :3], a["A"], a["B"], a["C"])
    with pytest.raises(ValueError, match="cu_seqlens"):
        ssd_scan(a["x"][:1], a["dt"][:1], a["A"], a["B"][:1], a["C"][:1], cu_seqlens=torch.tensor([0, 5, 3]))
    with pytest.raises(ValueError, match="initial_states"):
        ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], initial_states=torch.zeros(2, H, P, N + 1))
    with pytest.raises(ValueError, match="channels"):
        causal_conv1d(torch.randn(1, 3, 10), torch.randn(12, 4))
    with pytest.raises(ValueError, match="group_size"):
        gated_rmsnorm(torch.randn(2, 12), None, torch.randn(12), eps=1e-5, group_size=5)
    state = torch.zeros(2, H, P, N)
    with pytest.raises(ValueError, match="state_indices"):
        ssd_state_update(state, a["x"][:, 0], a["dt"][:, 0], a["A"], a["B"][:, 0], a["C"][:, 0],
                         state_indices=torch.tensor([0, 5]))
