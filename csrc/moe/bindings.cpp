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
#include "moe/ffn.h"
#include "moe/gemm_tables.h"
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

// A bf16 matrix with unit column stride on `like`'s device (its raw 16-bit patterns).
uint16_t* bf16_rows(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.dim() == 2 &&
                  (t.size(1) <= 1 || t.stride(1) == 1) && t.device() == like.device(),
              what, " must be a 2-D bfloat16 tensor with unit column stride on the same device");
  return static_cast<uint16_t*>(t.data_ptr());
}

void* workspace_ptr(at::Tensor& workspace, size_t bytes, const at::Tensor& like, const char* what) {
  TORCH_CHECK(workspace.is_contiguous() && workspace.device() == like.device() &&
                  static_cast<size_t>(workspace.numel() * workspace.element_size()) >= bytes,
              what, ": workspace must be contiguous, on the inputs' device, of >= ", bytes, " bytes");
  return workspace.data_ptr();
}

moe::GemmSchedule schedule_of(int64_t schedule) {
  TORCH_CHECK(schedule >= 0 && schedule <= 2, "schedule must be 0 (cooperative 128x128), "
              "1 (pingpong 64x128) or 2 (swap-AB 64x32), got ", schedule);
  return static_cast<moe::GemmSchedule>(schedule);
}

// ---- grouped_gemm: tables from the group ends, then the CUTLASS GEMM ------------------------------

int64_t moe_grouped_gemm_workspace_size(int64_t num_groups) {
  return static_cast<int64_t>(moe::grouped_gemm_bf16_workspace_size(static_cast<int>(num_groups)));
}

bool moe_gemm_table_layouts_match() { return moe::grouped_gemm_table_layouts_match(); }

moe::TablesFromEnds moe_grouped_gemm_params(const at::Tensor& a, const at::Tensor& b,
                                            const at::Tensor& group_ends, at::Tensor& out,
                                            at::Tensor& error_flag) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 3 && out.dim() == 2,
              "_moe_grouped_gemm: a (M, K), b (G, N, K), out (M, N)");
  TORCH_CHECK(a.size(1) == b.size(2) && out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "_moe_grouped_gemm: shapes disagree");
  TORCH_CHECK(b.scalar_type() == at::kBFloat16 && b.stride(2) == 1 && b.device() == a.device(),
              "_moe_grouped_gemm: b must be bfloat16 with unit inner stride on a's device");
  TORCH_CHECK(group_ends.scalar_type() == at::kInt && group_ends.is_contiguous() &&
                  group_ends.numel() == b.size(0) && group_ends.device() == a.device(),
              "_moe_grouped_gemm: group_ends must be a contiguous int32 tensor with one entry per group");
  moe::TablesFromEnds p{};
  p.a = bf16_rows(a, a, "_moe_grouped_gemm: a");
  p.lda = a.stride(0);
  p.b = b.data_ptr();
  p.stride_bg = b.stride(0);
  p.ldb = b.stride(1);
  p.d = bf16_rows(out, a, "_moe_grouped_gemm: out");
  p.ldd = out.stride(0);
  p.group_ends = group_ends.data_ptr<int32_t>();
  p.error_flag = error_flag_ptr(error_flag, a, "_moe_grouped_gemm");
  p.num_groups = static_cast<int>(b.size(0));
  p.m = a.size(0);
  p.n = b.size(1);
  p.k = b.size(2);
  return p;
}

void moe_grouped_gemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group_ends,
                           at::Tensor& out, at::Tensor& workspace, at::Tensor& error_flag,
                           int64_t schedule) {
  TORCH_CHECK(a.is_cuda(), "_moe_grouped_gemm: a must be a CUDA tensor");
  const auto p = moe_grouped_gemm_params(a, b, group_ends, out, error_flag);
  const size_t bytes = moe::grouped_gemm_bf16_workspace_size(p.num_groups);
  void* ws = workspace_ptr(workspace, bytes, a, "_moe_grouped_gemm");
  const c10::cuda::CUDAGuard guard(a.device());
  throw_on_cuda_error(
      moe::grouped_gemm_bf16(p, schedule_of(schedule), ws, bytes, a.get_device(),
                             c10::cuda::getCurrentCUDAStream(a.get_device()).stream()),
      "_moe_grouped_gemm (CUTLASS sm_90a grouped GEMM; needs 16-byte aligned rows)");
}

// CPU impl: the table kernel's per-thread code and the reference MMA with the kernels' epilogue.
void moe_grouped_gemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& group_ends,
                          at::Tensor& out, at::Tensor& workspace, at::Tensor& error_flag,
                          int64_t schedule) {
  TORCH_CHECK(a.is_cpu(), "_moe_grouped_gemm (CPU): a must be a CPU tensor");
  const auto p = moe_grouped_gemm_params(a, b, group_ends, out, error_flag);
  void* ws = workspace_ptr(workspace, moe::grouped_gemm_bf16_workspace_size(p.num_groups), a,
                           "_moe_grouped_gemm");
  moe::grouped_gemm_bf16_host(p, ws, schedule_of(schedule) == moe::GemmSchedule::kSwapAB64x32);
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

// ---- moe_ffn: plan, gather, grouped GEMMs over the plan's tables, combine (moe/ffn.h) -------------

int64_t moe_ffn_workspace_size(int64_t num_slots, int64_t num_experts, int64_t num_groups) {
  return static_cast<int64_t>(
      moe::ffn_workspace_bytes(num_slots, num_experts, static_cast<int>(num_groups)));
}

// The fields every moe_ffn step shares: routing, workspace, the gathered rows.
moe::FfnPlanParams ffn_base_params(const at::Tensor& ids, const at::Tensor& hidden, at::Tensor& x,
                                   at::Tensor& inverse, at::Tensor& workspace, int64_t num_experts,
                                   int64_t num_groups, bool swap_ab, const char* what) {
  TORCH_CHECK(ids.dim() == 2 && ids.is_contiguous() &&
                  (ids.scalar_type() == at::kInt || ids.scalar_type() == at::kLong) &&
                  ids.device() == hidden.device(),
              what, ": ids must be a contiguous int32/int64 (T, k) tensor on hidden's device");
  TORCH_CHECK(ids.numel() < INT32_MAX, what, ": too many slots for int32 rows");
  TORCH_CHECK((ids.numel() + ids.size(0)) * ((hidden.size(1) + 7) / 8) < UINT32_MAX, what,
              ": too many (row, 16-byte column group) pairs for the 32-bit thread indices");
  TORCH_CHECK(num_experts >= 1 && (num_groups == num_experts || num_groups == num_experts + 1),
              what, ": num_groups must be E or E + 1 (shared expert)");
  const int64_t tokens = ids.size(0), slots = ids.numel();
  const bool shared = num_groups > num_experts;
  TORCH_CHECK(hidden.size(0) == tokens, what, ": hidden (T, d) and ids (T, k) disagree on T");
  TORCH_CHECK(x.size(0) == slots + (shared ? tokens : 0) && x.size(1) >= hidden.size(1) &&
                  x.stride(0) % 8 == 0,
              what, ": x must be (T*k (+ T), >= d) with a row stride that is a multiple of 8");
  TORCH_CHECK(inverse.scalar_type() == at::kInt && inverse.is_contiguous() &&
                  inverse.numel() == slots && inverse.device() == hidden.device(),
              what, ": inverse must be a contiguous int32 (T*k,) tensor");
  moe::FfnPlanParams p{};
  p.ids = ids.data_ptr();
  p.ids_int64 = ids.scalar_type() == at::kLong;
  p.num_tokens = tokens;
  p.top_k = ids.size(1);
  p.num_experts = num_experts;
  p.groups = static_cast<int>(num_groups);
  p.ws = moe::carve_ffn_workspace(
      workspace_ptr(workspace, moe::ffn_workspace_bytes(slots, num_experts, p.groups), hidden, what),
      slots, num_experts, p.groups, swap_ab);
  p.hidden = bf16_rows(hidden, hidden, "moe_ffn: hidden");
  p.ld_hidden = hidden.stride(0);
  p.x = bf16_rows(x, hidden, "moe_ffn: x");
  p.ldx = x.stride(0);
  p.inverse = inverse.data_ptr<int32_t>();
  p.d = hidden.size(1);
  return p;
}

moe::FfnPlanParams ffn_plan_params(const at::Tensor& ids, const at::Tensor& hidden,
                                   const at::Tensor& w_up, const at::Tensor& w_down,
                                   const std::optional<at::Tensor>& shared_up,
                                   const std::optional<at::Tensor>& shared_down, at::Tensor& x,
                                   std::optional<at::Tensor>& gate, at::Tensor& h, at::Tensor& y,
                                   at::Tensor& inverse, at::Tensor& workspace,
                                   at::Tensor& error_flag, int64_t r, int64_t s, bool swap_ab) {
  const char* what = "_moe_ffn_plan";
  TORCH_CHECK(w_up.dim() == 3 && w_down.dim() == 3 && w_up.size(0) == w_down.size(0) &&
                  w_up.scalar_type() == at::kBFloat16 && w_down.scalar_type() == at::kBFloat16 &&
                  w_up.stride(2) == 1 && w_down.stride(2) == 1,
              what, ": w_up (E, F|2F, D) and w_down (E, D, F), bfloat16, unit inner stride");
  TORCH_CHECK(shared_up.has_value() == shared_down.has_value(), what,
              ": shared_up and shared_down go together");
  const int64_t experts = w_up.size(0);
  auto p = ffn_base_params(ids, hidden, x, inverse, workspace, experts,
                           experts + (shared_up.has_value() ? 1 : 0), swap_ab, what);
  p.glu = gate.has_value();
  const int64_t width = shared_up.has_value() && s > r ? s : r;
  TORCH_CHECK(r >= 1 && r <= w_down.size(2) && p.d <= w_down.size(1) && h.size(0) == x.size(0) &&
                  h.size(1) >= width && h.stride(0) % 8 == 0 && y.size(0) == x.size(0) &&
                  y.size(1) >= p.d && y.stride(0) % 8 == 0,
              what, ": h (rows, >= max(r, s)) and y (rows, >= d) with row strides multiples of 8");
  p.error_flag = error_flag_ptr(error_flag, hidden, what);
  p.h = bf16_rows(h, hidden, "_moe_ffn_plan: h");
  p.ldh = h.stride(0);
  p.y = bf16_rows(y, hidden, "_moe_ffn_plan: y");
  p.ldy = y.stride(0);
  if (p.glu) {
    TORCH_CHECK(gate->sizes() == h.sizes() && gate->stride(0) == h.stride(0), what,
                ": gate must be shaped and strided like h");
    p.gate = bf16_rows(*gate, hidden, "_moe_ffn_plan: gate");
  }
  p.w_up = static_cast<const uint16_t*>(w_up.data_ptr());
  p.up_stride_e = w_up.stride(0);
  p.up_ld = w_up.stride(1);
  p.up_value_offset = p.glu ? w_up.size(1) / 2 * w_up.stride(1) : 0;
  p.w_down = static_cast<const uint16_t*>(w_down.data_ptr());
  p.down_stride_e = w_down.stride(0);
  p.down_ld = w_down.stride(1);
  if (shared_up.has_value()) {
    TORCH_CHECK(shared_up->dim() == 2 && shared_down->dim() == 2 && shared_up->stride(1) == 1 &&
                    shared_down->stride(1) == 1 && shared_up->scalar_type() == at::kBFloat16 &&
                    shared_down->scalar_type() == at::kBFloat16 && s >= 1 &&
                    s <= shared_down->size(1),
                what, ": shared_up (Fs|2Fs, D), shared_down (D, Fs), bfloat16, unit inner stride");
    p.shared_up = static_cast<const uint16_t*>(shared_up->data_ptr());
    p.shared_up_ld = shared_up->stride(0);
    p.shared_value_offset = p.glu ? shared_up->size(0) / 2 * shared_up->stride(0) : 0;
    p.shared_down = static_cast<const uint16_t*>(shared_down->data_ptr());
    p.shared_down_ld = shared_down->stride(0);
  }
  p.r = r;
  p.s = s;
  return p;
}

void moe_ffn_plan_cuda(const at::Tensor& ids, const at::Tensor& hidden, const at::Tensor& w_up,
                       const at::Tensor& w_down, const std::optional<at::Tensor>& shared_up,
                       const std::optional<at::Tensor>& shared_down, at::Tensor& x,
                       std::optional<at::Tensor> gate, at::Tensor& h, at::Tensor& y,
                       at::Tensor& inverse, at::Tensor& workspace, at::Tensor& error_flag, int64_t r,
                       int64_t s, bool swap_ab) {
  TORCH_CHECK(hidden.is_cuda(), "_moe_ffn_plan: hidden must be a CUDA tensor");
  const auto p = ffn_plan_params(ids, hidden, w_up, w_down, shared_up, shared_down, x, gate, h, y,
                                 inverse, workspace, error_flag, r, s, swap_ab);
  const c10::cuda::CUDAGuard guard(hidden.device());
  throw_on_cuda_error(
      moe::ffn_plan_cuda(p, c10::cuda::getCurrentCUDAStream(hidden.get_device()).stream()),
      "_moe_ffn_plan");
}

void moe_ffn_plan_cpu(const at::Tensor& ids, const at::Tensor& hidden, const at::Tensor& w_up,
                      const at::Tensor& w_down, const std::optional<at::Tensor>& shared_up,
                      const std::optional<at::Tensor>& shared_down, at::Tensor& x,
                      std::optional<at::Tensor> gate, at::Tensor& h, at::Tensor& y,
                      at::Tensor& inverse, at::Tensor& workspace, at::Tensor& error_flag, int64_t r,
                      int64_t s, bool swap_ab) {
  TORCH_CHECK(hidden.is_cpu(), "_moe_ffn_plan (CPU): hidden must be a CPU tensor");
  moe::ffn_plan_host(ffn_plan_params(ids, hidden, w_up, w_down, shared_up, shared_down, x, gate, h,
                                     y, inverse, workspace, error_flag, r, s, swap_ab));
}

void moe_ffn_gather_cuda(const at::Tensor& ids, const at::Tensor& hidden, at::Tensor& x,
                         at::Tensor& inverse, at::Tensor& workspace, int64_t num_experts,
                         int64_t num_groups) {
  TORCH_CHECK(hidden.is_cuda(), "_moe_ffn_gather: hidden must be a CUDA tensor");
  const auto p = ffn_base_params(ids, hidden, x, inverse, workspace, num_experts, num_groups, false,
                                 "_moe_ffn_gather");
  const c10::cuda::CUDAGuard guard(hidden.device());
  throw_on_cuda_error(
      moe::ffn_gather_cuda(p, c10::cuda::getCurrentCUDAStream(hidden.get_device()).stream()),
      "_moe_ffn_gather");
}

void moe_ffn_gather_cpu(const at::Tensor& ids, const at::Tensor& hidden, at::Tensor& x,
                        at::Tensor& inverse, at::Tensor& workspace, int64_t num_experts,
                        int64_t num_groups) {
  TORCH_CHECK(hidden.is_cpu(), "_moe_ffn_gather (CPU): hidden must be a CPU tensor");
  moe::ffn_gather_host(ffn_base_params(ids, hidden, x, inverse, workspace, num_experts, num_groups,
                                       false, "_moe_ffn_gather"));
}

// The GEMM over one of the plan's tables; `out` is the buffer those tables write (h, g or y).
moe::FfnWorkspace ffn_gemm_workspace(at::Tensor& workspace, const at::Tensor& out,
                                     int64_t num_slots, int64_t num_experts, int64_t num_groups,
                                     int64_t table, int64_t schedule) {
  TORCH_CHECK(table >= 0 && table <= 2, "_moe_ffn_gemm: table must be 0 (up), 1 (value), 2 (down)");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.device() == workspace.device(),
              "_moe_ffn_gemm: out must be bfloat16 on the workspace's device");
  const int groups = static_cast<int>(num_groups);
  return moe::carve_ffn_workspace(
      workspace_ptr(workspace, moe::ffn_workspace_bytes(num_slots, num_experts, groups), out,
                    "_moe_ffn_gemm"),
      num_slots, num_experts, groups, schedule_of(schedule) == moe::GemmSchedule::kSwapAB64x32);
}

moe::GemmEpilogue epilogue_of(int64_t epilogue) {
  TORCH_CHECK(epilogue >= 0 && epilogue <= 2, "epilogue must be 0 (identity), 1 (relu^2) or "
              "2 (silu(C) * acc), got ", epilogue);
  return static_cast<moe::GemmEpilogue>(epilogue);
}

void moe_ffn_gemm_cuda(at::Tensor& workspace, at::Tensor& out, int64_t num_slots,
                       int64_t num_experts, int64_t num_groups, int64_t table, int64_t epilogue,
                       int64_t schedule) {
  TORCH_CHECK(out.is_cuda(), "_moe_ffn_gemm: out must be a CUDA tensor");
  const auto ws = ffn_gemm_workspace(workspace, out, num_slots, num_experts, num_groups, table,
                                     schedule);
  const c10::cuda::CUDAGuard guard(out.device());
  throw_on_cuda_error(
      moe::grouped_gemm_run(ws.tables[table], static_cast<int>(num_groups), epilogue_of(epilogue),
                            schedule_of(schedule), ws.cutlass, ws.cutlass_bytes, out.get_device(),
                            c10::cuda::getCurrentCUDAStream(out.get_device()).stream()),
      "_moe_ffn_gemm (CUTLASS sm_90a grouped GEMM)");
}

// CPU impl: the reference MMA over the plan's tables with the kernels' epilogue functions.
void moe_ffn_gemm_cpu(at::Tensor& workspace, at::Tensor& out, int64_t num_slots,
                      int64_t num_experts, int64_t num_groups, int64_t table, int64_t epilogue,
                      int64_t schedule) {
  TORCH_CHECK(out.is_cpu(), "_moe_ffn_gemm (CPU): out must be a CPU tensor");
  const auto ws = ffn_gemm_workspace(workspace, out, num_slots, num_experts, num_groups, table,
                                     schedule);
  moe::grouped_gemm_tables_host(ws.tables[table], static_cast<int>(num_groups),
                                epilogue_of(epilogue));
}

moe::FfnCombineParams ffn_combine_params(const at::Tensor& y, const at::Tensor& inverse,
                                         const at::Tensor& weights, at::Tensor& out, bool shared,
                                         double scaling) {
  TORCH_CHECK(weights.scalar_type() == at::kFloat && weights.is_contiguous() && weights.dim() == 2 &&
                  weights.size(0) == out.size(0) && weights.device() == y.device(),
              "_moe_ffn_combine: weights must be a contiguous float32 (T, k) tensor");
  const int64_t tokens = weights.size(0), slots = weights.numel();
  TORCH_CHECK(inverse.scalar_type() == at::kInt && inverse.is_contiguous() &&
                  inverse.numel() == slots && inverse.device() == y.device(),
              "_moe_ffn_combine: inverse must be contiguous int32 (T*k,)");
  TORCH_CHECK(y.size(0) == slots + (shared ? tokens : 0) && y.size(1) >= out.size(1),
              "_moe_ffn_combine: y (T*k (+ T), >= d), out (T, d)");
  TORCH_CHECK(tokens * ((out.size(1) + 7) / 8) < UINT32_MAX,
              "_moe_ffn_combine: too many (token, column group) pairs for 32-bit thread indices");
  moe::FfnCombineParams p{};
  p.y = bf16_rows(y, y, "_moe_ffn_combine: y");
  p.ldy = y.stride(0);
  p.inverse = inverse.data_ptr<int32_t>();
  p.weights = weights.data_ptr<float>();
  p.shared = shared;
  p.out = bf16_rows(out, y, "_moe_ffn_combine: out");
  p.ld_out = out.stride(0);
  p.tokens = tokens;
  p.top_k = weights.size(1);
  p.cols = out.size(1);
  p.scaling = static_cast<float>(scaling);
  return p;
}

void moe_ffn_combine_cuda(const at::Tensor& y, const at::Tensor& inverse, const at::Tensor& weights,
                          at::Tensor& out, bool shared, double scaling) {
  TORCH_CHECK(y.is_cuda(), "_moe_ffn_combine: y must be a CUDA tensor");
  const auto p = ffn_combine_params(y, inverse, weights, out, shared, scaling);
  const c10::cuda::CUDAGuard guard(y.device());
  throw_on_cuda_error(
      moe::ffn_combine_cuda(p, c10::cuda::getCurrentCUDAStream(y.get_device()).stream()),
      "_moe_ffn_combine");
}

void moe_ffn_combine_cpu(const at::Tensor& y, const at::Tensor& inverse, const at::Tensor& weights,
                         at::Tensor& out, bool shared, double scaling) {
  TORCH_CHECK(y.is_cpu(), "_moe_ffn_combine (CPU): y must be a CPU tensor");
  moe::ffn_combine_host(ffn_combine_params(y, inverse, weights, out, shared, scaling));
}

}  // namespace
}  // namespace star_elastic

// Each private op launches exactly one kernel (the plan, gather, GEMM and combine steps of
// moe_ffn; grouped_gemm's tables-then-GEMM pair is two), so the op count is the launch count.
TORCH_LIBRARY_FRAGMENT(star_elastic, m) {
  m.def("_moe_grouped_gemm_workspace_size(int num_groups) -> int",
        &star_elastic::moe_grouped_gemm_workspace_size);
  m.def("_moe_gemm_table_layouts_match() -> bool", &star_elastic::moe_gemm_table_layouts_match);
  m.def("_moe_grouped_gemm(Tensor a, Tensor b, Tensor group_ends, Tensor(a!) out, "
        "Tensor(b!) workspace, Tensor(c!) error_flag, int schedule) -> ()");
  m.def("_moe_route(Tensor logits, Tensor? bias, Tensor? mask, Tensor(a!) weights, Tensor(b!) ids, "
        "Tensor(c!) error_flag, int num_prefix, bool softmax, bool renormalize, float scaling) -> ()");
  m.def("_moe_align_workspace_size(int num_slots, int num_experts) -> int",
        &star_elastic::moe_align_workspace_size);
  m.def("_moe_align(Tensor ids, Tensor(a!) workspace, Tensor(b!) sorted_slots, Tensor(c!) counts, "
        "Tensor(d!) expert_offsets, Tensor(e!) block_offsets, Tensor(f!) error_flag, "
        "int block_m) -> ()");
  m.def("_moe_ffn_workspace_size(int num_slots, int num_experts, int num_groups) -> int",
        &star_elastic::moe_ffn_workspace_size);
  m.def("_moe_ffn_plan(Tensor ids, Tensor hidden, Tensor w_up, Tensor w_down, Tensor? shared_up, "
        "Tensor? shared_down, Tensor(a!) x, Tensor(b!)? gate, Tensor(c!) h, Tensor(d!) y, "
        "Tensor(e!) inverse, Tensor(f!) workspace, Tensor(g!) error_flag, int ffn_width, "
        "int shared_width, bool swap_ab) -> ()");
  m.def("_moe_ffn_gather(Tensor ids, Tensor hidden, Tensor(a!) x, Tensor(b!) inverse, "
        "Tensor(c!) workspace, int num_experts, int num_groups) -> ()");
  m.def("_moe_ffn_gemm(Tensor(a!) workspace, Tensor(b!) out, int num_slots, int num_experts, "
        "int num_groups, int table, int epilogue, int schedule) -> ()");
  m.def("_moe_ffn_combine(Tensor y, Tensor inverse, Tensor weights, Tensor(a!) out, bool shared, "
        "float scaling) -> ()");
}

TORCH_LIBRARY_IMPL(star_elastic, CUDA, m) {
  m.impl("_moe_grouped_gemm", &star_elastic::moe_grouped_gemm_cuda);
  m.impl("_moe_route", &star_elastic::moe_route_cuda);
  m.impl("_moe_align", &star_elastic::moe_align_cuda);
  m.impl("_moe_ffn_plan", &star_elastic::moe_ffn_plan_cuda);
  m.impl("_moe_ffn_gather", &star_elastic::moe_ffn_gather_cuda);
  m.impl("_moe_ffn_gemm", &star_elastic::moe_ffn_gemm_cuda);
  m.impl("_moe_ffn_combine", &star_elastic::moe_ffn_combine_cuda);
}

TORCH_LIBRARY_IMPL(star_elastic, CPU, m) {
  m.impl("_moe_grouped_gemm", &star_elastic::moe_grouped_gemm_cpu);
  m.impl("_moe_route", &star_elastic::moe_route_cpu);
  m.impl("_moe_align", &star_elastic::moe_align_cpu);
  m.impl("_moe_ffn_plan", &star_elastic::moe_ffn_plan_cpu);
  m.impl("_moe_ffn_gather", &star_elastic::moe_ffn_gather_cpu);
  m.impl("_moe_ffn_gemm", &star_elastic::moe_ffn_gemm_cpu);
  m.impl("_moe_ffn_combine", &star_elastic::moe_ffn_combine_cpu);
}
