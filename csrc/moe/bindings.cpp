// The MoE ops' bindings: schemas of the private `_moe_*` ops (a fragment of the one
// `star_elastic` library defined in csrc/torch_bindings.cpp) and their CUDA and CPU impls.
//
// The public ops live in Python (star_elastic_kernels/moe/), where argument checking, output
// allocation and backend choice happen before anything is launched; these only unpack tensors
// into the kernels' raw-pointer parameter structs (csrc/moe/*.h) and fill preallocated outputs.
// The CPU impls run the CUDA kernels' per-thread functions sequentially over the grid, so the
// kernels' index math is tested on machines without a GPU.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "moe/align.h"
#include "moe/ffn_elementwise.h"
#include "moe/grouped_gemm.h"
#include "moe/route.h"

namespace star_elastic {
namespace {

void throw_on_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// The device error flag (moe/error_flags.h) a kernel ORs its value-check bits into.
int32_t* error_flag_ptr(at::Tensor& flag, const at::Tensor& like, const char* what) {
  TORCH_CHECK(flag.scalar_type() == at::kInt && flag.numel() >= 1 && flag.device() == like.device(),
              what, ": error_flag must be an int32 tensor on the inputs' device");
  return flag.data_ptr<int32_t>();
}

int64_t moe_grouped_gemm_workspace_size(int64_t num_groups) {
  return static_cast<int64_t>(moe::grouped_gemm_bf16_workspace_size(static_cast<int>(num_groups)));
}

void moe_grouped_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group_ends,
                           at::Tensor& out, at::Tensor& workspace, at::Tensor& error_flag) {
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && group_ends.is_cuda() && out.is_cuda() &&
                  workspace.is_cuda(),
              "_moe_grouped_gemm: every tensor must be on the GPU");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
                  out.scalar_type() == at::kBFloat16,
              "_moe_grouped_gemm: a, b and out must be bfloat16");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 3 && out.dim() == 2, "_moe_grouped_gemm: a (M, K), b (G, N, K), out (M, N)");
  TORCH_CHECK(a.size(1) == b.size(2) && out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "_moe_grouped_gemm: shapes disagree");
  TORCH_CHECK(a.stride(1) == 1 && b.stride(2) == 1 && out.stride(1) == 1,
              "_moe_grouped_gemm: a, b and out need unit inner strides");
  TORCH_CHECK(group_ends.scalar_type() == at::kInt && group_ends.is_contiguous() &&
                  group_ends.numel() == b.size(0),
              "_moe_grouped_gemm: group_ends must be a contiguous int32 tensor with one entry per group");
  TORCH_CHECK(workspace.is_contiguous(), "_moe_grouped_gemm: workspace must be contiguous");
  const c10::cuda::CUDAGuard guard(a.device());
  moe::GroupedGemmArgs args{};
  args.a = a.data_ptr();
  args.lda = a.stride(0);
  args.b = b.data_ptr();
  args.stride_bg = b.stride(0);
  args.ldb = b.stride(1);
  args.d = out.data_ptr();
  args.ldd = out.stride(0);
  args.group_ends = group_ends.data_ptr<int32_t>();
  args.error_flag = error_flag_ptr(error_flag, a, "_moe_grouped_gemm");
  args.num_groups = static_cast<int>(b.size(0));
  args.m = a.size(0);
  args.n = b.size(1);
  args.k = b.size(2);
  throw_on_cuda_error(
      moe::grouped_gemm_bf16(args, workspace.data_ptr(), static_cast<size_t>(workspace.numel()),
                             a.get_device(), c10::cuda::getCurrentCUDAStream(a.get_device()).stream()),
      "_moe_grouped_gemm (CUTLASS sm_90a grouped GEMM; needs 16-byte aligned rows)");
}

// Routing and alignment: the same argument unpacking for the CUDA kernels and for their CPU
// impls, which run the kernels' per-thread functions sequentially (route.h, align.h).

moe::RouteParams moe_route_params(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& mask, at::Tensor& weights,
                                  at::Tensor& ids, at::Tensor& error_flag, int64_t num_prefix,
                                  bool softmax, bool renormalize, double scaling) {
  TORCH_CHECK(logits.dim() == 2, "_moe_route: logits must be (T, E)");
  const int64_t tokens = logits.size(0), columns = logits.size(1);
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2 &&
                  weights.size(0) == tokens && weights.size(1) >= 1,
              "_moe_route: weights must be a contiguous float32 (T, k) tensor");
  TORCH_CHECK(ids.scalar_type() == at::kInt && ids.is_contiguous() && ids.sizes() == weights.sizes(),
              "_moe_route: ids must be a contiguous int32 tensor shaped like weights");
  TORCH_CHECK(weights.device() == logits.device() && ids.device() == logits.device(),
              "_moe_route: every tensor must be on logits' device");
  moe::RouteParams p{};
  p.logits = logits.data_ptr();
  switch (logits.scalar_type()) {
    case at::kFloat: p.logit_type = moe::RouteLogitType::kFloat32; break;
    case at::kHalf: p.logit_type = moe::RouteLogitType::kFloat16; break;
    case at::kBFloat16: p.logit_type = moe::RouteLogitType::kBFloat16; break;
    default: TORCH_CHECK(false, "_moe_route: logits must be float32, float16 or bfloat16");
  }
  p.stride_t = logits.stride(0);
  p.stride_e = logits.stride(1);
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() >= columns && bias->device() == logits.device(),
                "_moe_route: bias must be a contiguous float32 tensor of >= E values on logits' device");
    p.bias = bias->data_ptr<float>();
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->element_size() == 1 && mask->is_contiguous() && mask->numel() >= columns &&
                    mask->device() == logits.device(),
                "_moe_route: mask must be a contiguous bool tensor of >= E values on logits' device");
    p.mask = static_cast<const uint8_t*>(mask->data_ptr());
  }
  p.weights = weights.data_ptr<float>();
  p.ids = ids.data_ptr<int32_t>();
  p.error_flag = error_flag_ptr(error_flag, logits, "_moe_route");
  p.num_tokens = tokens;
  p.num_columns = columns;
  p.num_prefix = num_prefix;
  p.top_k = static_cast<int>(weights.size(1));
  p.softmax = softmax;
  p.renormalize = renormalize;
  p.scaling = static_cast<float>(scaling);
  return p;
}

void moe_route_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                    const std::optional<at::Tensor>& mask, at::Tensor& weights, at::Tensor& ids,
                    at::Tensor& error_flag, int64_t num_prefix, bool softmax, bool renormalize,
                    double scaling) {
  TORCH_CHECK(logits.is_cuda(), "_moe_route: logits must be a CUDA tensor");
  const auto p = moe_route_params(logits, bias, mask, weights, ids, error_flag, num_prefix, softmax,
                                  renormalize, scaling);
  const c10::cuda::CUDAGuard guard(logits.device());
  throw_on_cuda_error(
      moe::route_cuda(p, c10::cuda::getCurrentCUDAStream(logits.get_device()).stream()),
      "_moe_route");
}

// CPU impl: the CUDA kernel's per-token function run sequentially (tests the index math and the
// arithmetic of the kernel on machines without a GPU; not the launch).
void moe_route_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& bias,
                   const std::optional<at::Tensor>& mask, at::Tensor& weights, at::Tensor& ids,
                   at::Tensor& error_flag, int64_t num_prefix, bool softmax, bool renormalize,
                   double scaling) {
  TORCH_CHECK(logits.is_cpu(), "_moe_route (CPU): logits must be a CPU tensor");
  moe::route_host(moe_route_params(logits, bias, mask, weights, ids, error_flag, num_prefix,
                                   softmax, renormalize, scaling));
}

int64_t moe_align_workspace_size(int64_t num_slots, int64_t num_experts) {
  return moe::align_workspace_elements(num_slots, num_experts);
}

moe::AlignParams moe_align_params(const at::Tensor& ids, at::Tensor& workspace,
                                  at::Tensor& sorted_slots, at::Tensor& counts,
                                  at::Tensor& expert_offsets, at::Tensor& block_offsets,
                                  at::Tensor& error_flag, int64_t block_m) {
  TORCH_CHECK(ids.is_contiguous() && (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong),
              "_moe_align: ids must be contiguous int32 or int64");
  const int64_t experts = counts.numel();
  TORCH_CHECK(block_m >= 1 && experts >= 1, "_moe_align: block_m and the expert count must be >= 1");
  for (const at::Tensor* t : {&workspace, &sorted_slots, &counts, &expert_offsets, &block_offsets}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->device() == ids.device(),
                "_moe_align: outputs and workspace must be contiguous int32 on ids' device");
  }
  TORCH_CHECK(sorted_slots.numel() == ids.numel() && expert_offsets.numel() == experts + 1 &&
                  block_offsets.numel() == experts + 1,
              "_moe_align: sorted_slots (T*k,), counts (E,), expert_offsets and block_offsets (E+1,)");
  TORCH_CHECK(workspace.numel() >= moe::align_workspace_elements(ids.numel(), experts),
              "_moe_align: workspace is too small (see _moe_align_workspace_size)");
  TORCH_CHECK(ids.numel() < INT32_MAX, "_moe_align: too many slots for int32 slot ids");
  moe::AlignParams p{};
  p.ids = ids.data_ptr();
  p.ids_int64 = ids.scalar_type() == at::kLong;
  p.num_slots = ids.numel();
  p.num_experts = experts;
  p.block_m = block_m;
  p.workspace = workspace.data_ptr<int32_t>();
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.counts = counts.data_ptr<int32_t>();
  p.expert_offsets = expert_offsets.data_ptr<int32_t>();
  p.block_offsets = block_offsets.data_ptr<int32_t>();
  p.error_flag = error_flag_ptr(error_flag, ids, "_moe_align");
  return p;
}

void moe_align_cuda(const at::Tensor& ids, at::Tensor& workspace, at::Tensor& sorted_slots,
                    at::Tensor& counts, at::Tensor& expert_offsets, at::Tensor& block_offsets,
                    at::Tensor& error_flag, int64_t block_m) {
  TORCH_CHECK(ids.is_cuda(), "_moe_align: ids must be a CUDA tensor");
  const auto p = moe_align_params(ids, workspace, sorted_slots, counts, expert_offsets,
                                  block_offsets, error_flag, block_m);
  const c10::cuda::CUDAGuard guard(ids.device());
  throw_on_cuda_error(moe::align_cuda(p, c10::cuda::getCurrentCUDAStream(ids.get_device()).stream()),
                      "_moe_align");
}

// CPU impl: the four phases' per-thread functions run sequentially (see moe_route_cpu).
void moe_align_cpu(const at::Tensor& ids, at::Tensor& workspace, at::Tensor& sorted_slots,
                   at::Tensor& counts, at::Tensor& expert_offsets, at::Tensor& block_offsets,
                   at::Tensor& error_flag, int64_t block_m) {
  TORCH_CHECK(ids.is_cpu(), "_moe_align (CPU): ids must be a CPU tensor");
  moe::align_host(moe_align_params(ids, workspace, sorted_slots, counts, expert_offsets,
                                   block_offsets, error_flag, block_m));
}

// moe_ffn's elementwise steps (bf16) around the grouped GEMMs; CUDA kernels and CPU impls that
// run their per-thread functions sequentially (moe/ffn_elementwise.h).

const uint16_t* bf16_rows(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1) &&
                  t.device() == like.device(),
              what, " must be a 2-D bfloat16 tensor with unit column stride on the same device");
  return static_cast<const uint16_t*>(t.data_ptr());
}

moe::GatherParams moe_gather_params(const at::Tensor& x, const at::Tensor& sorted_slots,
                                    int64_t top_k, at::Tensor& out) {
  TORCH_CHECK(sorted_slots.scalar_type() == at::kInt && sorted_slots.is_contiguous() &&
                  sorted_slots.numel() == out.size(0) && sorted_slots.device() == x.device(),
              "_moe_gather_rows: sorted_slots must be contiguous int32 with one entry per out row");
  TORCH_CHECK(top_k >= 1 && out.size(1) == x.size(1), "_moe_gather_rows: top_k >= 1, out (P, d)");
  moe::GatherParams p{};
  p.x = bf16_rows(x, x, "_moe_gather_rows: x");
  p.x_stride = x.stride(0);
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.top_k = top_k;
  p.out = const_cast<uint16_t*>(bf16_rows(out, x, "_moe_gather_rows: out"));
  p.out_stride = out.stride(0);
  p.rows = out.size(0);
  p.cols = out.size(1);
  return p;
}

moe::ActivationParams moe_activation_params(const at::Tensor& gate,
                                            const std::optional<at::Tensor>& value, at::Tensor& out) {
  TORCH_CHECK(out.sizes() == gate.sizes() && (!value.has_value() || value->sizes() == gate.sizes()),
              "_moe_activation: gate, value and out must have one shape");
  moe::ActivationParams p{};
  p.gate = bf16_rows(gate, gate, "_moe_activation: gate");
  p.gate_stride = gate.stride(0);
  if (value.has_value()) {
    p.value = bf16_rows(*value, gate, "_moe_activation: value");
    p.value_stride = value->stride(0);
  }
  p.out = const_cast<uint16_t*>(bf16_rows(out, gate, "_moe_activation: out"));
  p.out_stride = out.stride(0);
  p.rows = gate.size(0);
  p.cols = gate.size(1);
  return p;
}

moe::CombineParams moe_combine_params(const at::Tensor& y, const at::Tensor& sorted_slots,
                                      const at::Tensor& weights,
                                      const std::optional<at::Tensor>& shared, at::Tensor& inverse,
                                      at::Tensor& out, double scaling) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2 &&
                  weights.size(0) == out.size(0) && weights.device() == y.device(),
              "_moe_combine: weights must be a contiguous float32 (T, k) tensor");
  const int64_t slots = weights.numel();
  for (const at::Tensor* t : {&sorted_slots, static_cast<const at::Tensor*>(&inverse)}) {
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->numel() == slots &&
                    t->device() == y.device(),
                "_moe_combine: sorted_slots and inverse must be contiguous int32 (T*k,)");
  }
  TORCH_CHECK(y.size(0) == slots && y.size(1) == out.size(1), "_moe_combine: y (T*k, d), out (T, d)");
  moe::CombineParams p{};
  p.y = bf16_rows(y, y, "_moe_combine: y");
  p.y_stride = y.stride(0);
  p.sorted_slots = sorted_slots.data_ptr<int32_t>();
  p.inverse = inverse.data_ptr<int32_t>();
  p.weights = weights.data_ptr<float>();
  if (shared.has_value()) {
    TORCH_CHECK(shared->sizes() == out.sizes(), "_moe_combine: shared must be (T, d)");
    p.shared = bf16_rows(*shared, y, "_moe_combine: shared");
    p.shared_stride = shared->stride(0);
  }
  p.out = const_cast<uint16_t*>(bf16_rows(out, y, "_moe_combine: out"));
  p.out_stride = out.stride(0);
  p.tokens = weights.size(0);
  p.top_k = weights.size(1);
  p.cols = out.size(1);
  p.scaling = static_cast<float>(scaling);
  return p;
}

void moe_gather_rows_cuda(const at::Tensor& x, const at::Tensor& sorted_slots, int64_t top_k,
                          at::Tensor& out) {
  TORCH_CHECK(x.is_cuda(), "_moe_gather_rows: x must be a CUDA tensor");
  const auto p = moe_gather_params(x, sorted_slots, top_k, out);
  const c10::cuda::CUDAGuard guard(x.device());
  throw_on_cuda_error(
      moe::gather_rows_cuda(p, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
      "_moe_gather_rows");
}

void moe_gather_rows_cpu(const at::Tensor& x, const at::Tensor& sorted_slots, int64_t top_k,
                         at::Tensor& out) {
  TORCH_CHECK(x.is_cpu(), "_moe_gather_rows (CPU): x must be a CPU tensor");
  moe::gather_rows_host(moe_gather_params(x, sorted_slots, top_k, out));
}

void moe_activation_cuda(const at::Tensor& gate, const std::optional<at::Tensor>& value,
                         at::Tensor& out) {
  TORCH_CHECK(gate.is_cuda(), "_moe_activation: gate must be a CUDA tensor");
  const auto p = moe_activation_params(gate, value, out);
  const c10::cuda::CUDAGuard guard(gate.device());
  throw_on_cuda_error(
      moe::activation_cuda(p, c10::cuda::getCurrentCUDAStream(gate.get_device()).stream()),
      "_moe_activation");
}

void moe_activation_cpu(const at::Tensor& gate, const std::optional<at::Tensor>& value,
                        at::Tensor& out) {
  TORCH_CHECK(gate.is_cpu(), "_moe_activation (CPU): gate must be a CPU tensor");
  moe::activation_host(moe_activation_params(gate, value, out));
}

void moe_combine_cuda(const at::Tensor& y, const at::Tensor& sorted_slots, const at::Tensor& weights,
                      const std::optional<at::Tensor>& shared, at::Tensor& inverse, at::Tensor& out,
                      double scaling) {
  TORCH_CHECK(y.is_cuda(), "_moe_combine: y must be a CUDA tensor");
  const auto p = moe_combine_params(y, sorted_slots, weights, shared, inverse, out, scaling);
  const c10::cuda::CUDAGuard guard(y.device());
  throw_on_cuda_error(moe::combine_cuda(p, c10::cuda::getCurrentCUDAStream(y.get_device()).stream()),
                      "_moe_combine");
}

void moe_combine_cpu(const at::Tensor& y, const at::Tensor& sorted_slots, const at::Tensor& weights,
                     const std::optional<at::Tensor>& shared, at::Tensor& inverse, at::Tensor& out,
                     double scaling) {
  TORCH_CHECK(y.is_cpu(), "_moe_combine (CPU): y must be a CPU tensor");
  moe::combine_host(moe_combine_params(y, sorted_slots, weights, shared, inverse, out, scaling));
}

}  // namespace
}  // namespace star_elastic

TORCH_LIBRARY_FRAGMENT(star_elastic, m) {
  m.def("_moe_grouped_gemm_workspace_size(int num_groups) -> int",
        &star_elastic::moe_grouped_gemm_workspace_size);
  m.def("_moe_grouped_gemm(Tensor a, Tensor b, Tensor group_ends, Tensor(a!) out, "
        "Tensor(b!) workspace, Tensor(c!) error_flag) -> ()");
  m.def("_moe_route(Tensor logits, Tensor? bias, Tensor? mask, Tensor(a!) weights, Tensor(b!) ids, "
        "Tensor(c!) error_flag, int num_prefix, bool softmax, bool renormalize, float scaling) -> ()");
  m.def("_moe_align_workspace_size(int num_slots, int num_experts) -> int",
        &star_elastic::moe_align_workspace_size);
  m.def("_moe_align(Tensor ids, Tensor(a!) workspace, Tensor(b!) sorted_slots, Tensor(c!) counts, "
        "Tensor(d!) expert_offsets, Tensor(e!) block_offsets, Tensor(f!) error_flag, "
        "int block_m) -> ()");
  m.def("_moe_gather_rows(Tensor x, Tensor sorted_slots, int top_k, Tensor(a!) out) -> ()");
  m.def("_moe_activation(Tensor gate, Tensor? value, Tensor(a!) out) -> ()");
  m.def("_moe_combine(Tensor y, Tensor sorted_slots, Tensor weights, Tensor? shared, "
        "Tensor(a!) inverse, Tensor(b!) out, float scaling) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_moe_grouped_gemm", &star_elastic::moe_grouped_gemm_cuda);
  m.impl("_moe_route", &star_elastic::moe_route_cuda);
  m.impl("_moe_align", &star_elastic::moe_align_cuda);
  m.impl("_moe_gather_rows", &star_elastic::moe_gather_rows_cuda);
  m.impl("_moe_activation", &star_elastic::moe_activation_cuda);
  m.impl("_moe_combine", &star_elastic::moe_combine_cuda);
}

TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_moe_route", &star_elastic::moe_route_cpu);
  m.impl("_moe_align", &star_elastic::moe_align_cpu);
  m.impl("_moe_gather_rows", &star_elastic::moe_gather_rows_cpu);
  m.impl("_moe_activation", &star_elastic::moe_activation_cpu);
  m.impl("_moe_combine", &star_elastic::moe_combine_cpu);
}
