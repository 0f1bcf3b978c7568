"""FP8Weight containers and slicing; safetensors save / load (flat and nested checkpoints)."""

import pytest
import torch
from safetensors import safe_open

import star_elastic_kernels as sek
from tests.helpers import backend_cases


def weight(rows=24, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.logspace(-1, 1, cols)


def fp8_equal(a: sek.FP8Weight, b: sek.FP8Weight) -> bool:
    return (torch.equal(a.data.cpu().view(torch.uint8), b.data.cpu().view(torch.uint8))
            and torch.equal(a.scale.cpu(), b.scale.cpu()))


def nvfp4_equal(a: sek.NVFP4Weight, b: sek.NVFP4Weight) -> bool:
    return (torch.equal(a.data.cpu(), b.data.cpu())
            and torch.equal(a.scale.cpu().view(torch.uint8), b.scale.cpu().view(torch.uint8))
            and torch.equal(a.global_scale.cpu(), b.global_scale.cpu()))


# --- FP8Weight -----------------------------------------------------------------------------------


def test_fp8_weight_unpacks_like_the_old_named_tuple():
    result = sek.quantize_fp8(weight(), granularity="channel")
    data, scale = result
    assert data is result.data and scale is result.scale
    assert isinstance(result, sek.FP8Weight) and sek.FP8Quantized is sek.FP8Weight
    assert result.granularity == "channel" and result.out_features == 24
    assert torch.equal(result.dequantize(torch.float32),
                       sek.dequantize_fp8(data, scale, dtype=torch.float32))


@pytest.mark.parametrize("backend,device", backend_cases())
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("n,k", [(24, 96), (10, 33), (1, 1), (0, 0), (24, 0)])
def test_fp8_slice_is_a_view_and_equals_quantizing_the_slice(backend, device, granularity, n, k):
    w = weight().to(device)
    parent = sek.quantize_fp8(w, granularity=granularity, backend=backend)
    child = parent.slice(n, k)
    assert child.data.untyped_storage().data_ptr() == parent.data.untyped_storage().data_ptr()
    # The slice keeps the parent's scales (per tensor: the same one; per channel: its rows).
    direct = sek.quantize_fp8(w[:n, :k], child.scale, granularity=granularity, backend=backend)
    assert fp8_equal(child, direct)


def test_fp8_slice_rejects_bad_widths():
    parent = sek.quantize_fp8(weight())
    with pytest.raises(ValueError, match=r"out_features must be in \[0, 24\]"):
        parent.slice(25, 8)
    with pytest.raises(TypeError, match="in_features must be an int"):
        parent.slice(2, "8")
    with pytest.raises(ValueError, match="2-D"):
        sek.quantize_fp8(torch.ones(2, 3, 4)).slice(1, 1)


# --- checkpoints ---------------------------------------------------------------------------------


def test_save_load_round_trip_with_common_tensor_names(tmp_path):
    nv = sek.quantize_nvfp4(weight(24, 96, seed=1))
    f8t = sek.quantize_fp8(weight(16, 40, seed=2))
    f8c = sek.quantize_fp8(weight(16, 40, seed=3), granularity="channel")
    path = tmp_path / "model.safetensors"
    sek.save_quantized(path, {"mlp.up": nv, "mamba.in_proj": f8t, "mamba.out_proj": f8c},
                       input_scales={"mamba.in_proj": torch.tensor(0.02)})
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        assert f.get_tensor("mlp.up.weight").dtype == torch.uint8
        assert f.get_tensor("mlp.up.weight").shape == (24, 48)
        assert f.get_tensor("mlp.up.weight_scale").dtype == torch.float8_e4m3fn
        assert f.get_tensor("mlp.up.weight_scale").shape == (24, 6)
        assert f.get_tensor("mlp.up.weight_scale_2").shape == ()
        assert f.get_tensor("mamba.out_proj.weight_scale").shape == (16, 1)
        assert f.get_tensor("mamba.in_proj.weight_scale").shape == ()
    assert names == {"mlp.up.weight", "mlp.up.weight_scale", "mlp.up.weight_scale_2",
                     "mamba.in_proj.weight", "mamba.in_proj.weight_scale",
                     "mamba.in_proj.input_scale", "mamba.out_proj.weight",
                     "mamba.out_proj.weight_scale"}
    weights, input_scales, nested = sek.load_quantized(path)
    assert nvfp4_equal(weights["mlp.up"], nv)
    assert fp8_equal(weights["mamba.in_proj"], f8t)
    assert fp8_equal(weights["mamba.out_proj"], f8c)
    assert torch.equal(input_scales["mamba.in_proj"], torch.tensor(0.02))
    assert nested == {}


def test_nested_checkpoint_slices_are_exact(tmp_path):
    w = weight(64, 256, seed=5)
    parent = sek.quantize_nvfp4(w)
    fp8_parent = sek.quantize_fp8(w, granularity="channel")
    widths = [(64, 256), (32, 128), (16, 64)]
    path = tmp_path / "nested.safetensors"
    sek.save_quantized(path, {"up": parent, "down": fp8_parent},
                       nested_widths={"up": widths, "down": widths})
    _, _, nested = sek.load_quantized(path)
    assert nested == {"up": widths, "down": widths}
    for n, k in widths:
        children, _, _ = sek.load_quantized(path, widths={"up": (n, k), "down": (n, k)})
        # exactly the child quantized on its own with the parent's global scale / row scales
        assert nvfp4_equal(children["up"], sek.quantize_nvfp4(w[:n, :k], parent.global_scale))
        assert fp8_equal(children["down"],
                         sek.quantize_fp8(w[:n, :k], fp8_parent.scale[:n], granularity="channel"))
        # a standalone child checkpoint (contiguous copies) round-trips to the same values
        child_path = tmp_path / f"child_{n}_{k}.safetensors"
        sek.save_quantized(child_path, sek.slice_quantized({"up": parent, "down": fp8_parent},
                                                           {"up": (n, k), "down": (n, k)}))
        standalone, _, _ = sek.load_quantized(child_path)
        assert nvfp4_equal(standalone["up"], children["up"])
        assert fp8_equal(standalone["down"], children["down"])
        x = torch.randn(3, k)
        assert torch.equal(sek.nvfp4_linear(x, standalone["up"]),
                           sek.nvfp4_linear(x, parent, out_features=n))


def test_checkpoint_errors(tmp_path):
    nv = sek.quantize_nvfp4(weight())
    with pytest.raises(ValueError, match="multiple of 16"):
        sek.save_quantized(tmp_path / "a.safetensors", {"up": nv}, nested_widths={"up": [(8, 40)]})
    with pytest.raises(ValueError, match="not among the weights"):
        sek.save_quantized(tmp_path / "b.safetensors", {"up": nv},
                           input_scales={"down": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="NVFP4Weight or FP8Weight"):
        sek.quantized_state_dict({"up": weight()})
    from safetensors.torch import save_file

    save_file({"up.weight": torch.zeros(4, 8, dtype=torch.uint8),
               "up.weight_scale": torch.zeros(4, 1).to(torch.float8_e4m3fn)},
              str(tmp_path / "c.safetensors"))
    with pytest.raises(ValueError, match="weight_scale_2"):
        sek.load_quantized(tmp_path / "c.safetensors")
