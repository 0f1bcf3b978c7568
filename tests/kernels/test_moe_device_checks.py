"""Value checks on the device (star_elastic_kernels/moe/_errors.py): a bad expert id, a mask with
too few experts or bad grouped-GEMM offsets are handled harmlessly by the kernel that reads them
and flagged; raise_device_errors reports and resets the flag. The CUDA kernels' checks run here
through their CPU impls (the same per-thread code), the Triton ones in the interpreter; on CPU
tensors the public ops check on the host before anything runs (tests in test_moe_*.py).
"""

import pytest
import torch

from star_elastic_kernels import _extension
from star_elastic_kernels.moe import _errors, raise_device_errors
from star_elastic_kernels.moe import align as align_ops
from star_elastic_kernels.moe import gemm as gemm_ops
from star_elastic_kernels.moe import route as route_ops
from star_elastic_kernels.reference import moe as reference

needs_ext = pytest.mark.skipif(not _extension.has_op("_moe_align"),
                               reason="the CUDA extension (CPU impls of the _moe_* ops) is not built")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def clean_flag():
    _errors.device_flag(torch.empty(0)).zero_()
    yield
    _errors.device_flag(torch.empty(0)).zero_()


def flag_bits() -> int:
    return int(_errors.device_flag(torch.empty(0)).item())


def test_raise_device_errors_reports_each_bit_once_and_resets():
    raise_device_errors(CPU)  # clean: no error
    _errors.device_flag(torch.empty(0)).fill_(_errors.IDS_OUT_OF_RANGE | _errors.BAD_GROUP_ENDS)
    with pytest.raises(ValueError, match=r"cpu: expert ids outside.*; cpu: grouped_gemm got"):
        raise_device_errors("cpu")
    assert flag_bits() == 0
    raise_device_errors()


def good_slots_alignment(ids, num_experts, block_m):
    """The alignment of the in-range slots only, slot numbers kept (what the kernels produce)."""
    flat = ids.reshape(-1).long()
    ok = (flat >= 0) & (flat < num_experts)
    kept = torch.nonzero(ok).flatten()
    slots, counts, offsets, blocks = reference.moe_align(flat[ok].view(-1, 1), num_experts, block_m)
    return kept[slots.long()].to(torch.int32), counts, offsets, blocks


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_ext),
                                     pytest.param("triton", marks=pytest.mark.interpreter)])
def test_align_skips_and_flags_out_of_range_ids(backend):
    ids = torch.tensor([[0, 3], [7, 1], [-2, 3], [2, 2]], dtype=torch.int32)
    if backend == "cuda":
        got = align_ops._align_cuda(ids, 6, 2)
    else:
        from star_elastic_kernels.triton import moe_align

        got = moe_align.moe_align(ids, 6, 2, _errors.device_flag(ids))
    assert flag_bits() == _errors.IDS_OUT_OF_RANGE
    want = good_slots_alignment(ids, 6, 2)
    assert torch.equal(got[0][: want[0].numel()], want[0])
    for ours, theirs in zip(got[1:], want[1:]):
        assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="expert ids outside"):
        raise_device_errors(CPU)


@pytest.mark.parametrize("backend", [pytest.param("cuda", marks=needs_ext),
                                     pytest.param("triton", marks=pytest.mark.interpreter)])
def test_route_flags_a_mask_with_too_few_experts(backend):
    logits = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[2, 6]] = True  # two active experts, top_k = 3
    if backend == "cuda":
        weights, ids = route_ops._route_cuda(logits, None, mask, 3, False, 8, False, 1.0)
    else:
        from star_elastic_kernels.triton import moe_route

        weights, ids = moe_route.moe_route(logits, None, mask, 3, False, 8, False, 1.0,
                                           _errors.device_flag(logits))
    assert flag_bits() == _errors.TOO_FEW_ACTIVE_EXPERTS
    assert set(ids[:, :2].flatten().tolist()) <= {2, 6}  # the active ones first
    assert torch.equal(ids[:, 2], torch.zeros(5, dtype=torch.int32))
    assert torch.equal(weights[:, 2], torch.zeros(5))
    want = torch.sigmoid(logits).gather(1, ids[:, :2].long())
    torch.testing.assert_close(weights[:, :2], want)


@pytest.mark.parametrize("ends,clamped", [([2, 1, 5], [2, 2, 5]), ([3, 9, 9], [3, 5, 5]),
                                          ([-1, 2, 4], [0, 2, 4]), ([1, 2, 5], [1, 2, 5])])
def test_triton_path_clamps_and_flags_bad_offsets(ends, clamped):
    got = gemm_ops._checked_ends(torch.tensor(ends), 5)
    assert got.tolist() == clamped
    assert flag_bits() == (0 if ends == clamped else _errors.BAD_GROUP_ENDS)


def test_public_ops_on_cpu_still_raise_before_running():
    with pytest.raises(ValueError, match="ids must lie"):
        align_ops.moe_align(torch.tensor([[0, 9]]), 8)
    assert flag_bits() == 0


def test_validate_must_be_a_bool():
    with pytest.raises(TypeError, match="validate"):
        align_ops.moe_align(torch.tensor([[0, 1]]), 8, validate=1)
