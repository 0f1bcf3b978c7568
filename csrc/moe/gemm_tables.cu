// Grouped-GEMM argument tables (see gemm_tables.h): the tables of grouped_gemm's operands from the
// group ends, and the CPU impl of a grouped GEMM over tables.
#include "moe/gemm_tables.h"

#include "moe/bf16.h"

namespace star_elastic {
namespace moe {
namespace {

constexpr int kThreads = 128;

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Group g of TablesFromEnds: rows [start, end), clamped into [0, M] and non-decreasing.
__host__ __device__ void table_from_ends(const TablesFromEnds& p, const GemmTables& t, int g) {
  const int64_t prev = g == 0 ? 0 : static_cast<int64_t>(p.group_ends[g - 1]);
  const int64_t here = static_cast<int64_t>(p.group_ends[g]);
  if (here < prev || here < 0 || here > p.m || (g == p.num_groups - 1 && here != p.m)) {
    raise_error(p.error_flag, kErrorBadGroupEnds);
  }
  const auto clamp = [&](int64_t v) { return v < 0 ? int64_t{0} : (v > p.m ? p.m : v); };
  const int64_t start = clamp(prev);
  const int64_t end = clamp(here) < start ? start : clamp(here);
  const auto* a = static_cast<const uint16_t*>(p.a) + start * p.lda;
  const auto* b = static_cast<const uint16_t*>(p.b) + static_cast<int64_t>(g) * p.stride_bg;
  auto* d = static_cast<uint16_t*>(p.d) + start * p.ldd;
  write_group(t, g, end - start, p.n, p.k, a, p.lda, b, p.ldb, nullptr, 0, d, p.ldd);
}

__global__ void __launch_bounds__(kThreads) tables_from_ends_kernel(const TablesFromEnds p,
                                                                    const GemmTables t) {
  const int g = blockIdx.x * kThreads + threadIdx.x;
  if (g < p.num_groups) table_from_ends(p, t, g);
}

}  // namespace

size_t gemm_tables_bytes(int groups) {
  const size_t g = static_cast<size_t>(groups > 0 ? groups : 1);
  return round_up(3 * g * sizeof(int32_t)) + 4 * round_up(g * sizeof(void*)) +
         4 * round_up(g * sizeof(int64_t));
}

GemmTables carve_gemm_tables(void* base, int groups, bool swap_ab) {
  const size_t g = static_cast<size_t>(groups > 0 ? groups : 1);
  auto* p = static_cast<char*>(base);
  const auto take = [&](size_t bytes) {
    char* here = p;
    p += round_up(bytes);
    return here;
  };
  GemmTables t;
  t.shapes = reinterpret_cast<int32_t*>(take(3 * g * sizeof(int32_t)));
  t.a = reinterpret_cast<const void**>(take(g * sizeof(void*)));
  t.b = reinterpret_cast<const void**>(take(g * sizeof(void*)));
  t.c = reinterpret_cast<const void**>(take(g * sizeof(void*)));
  t.d = reinterpret_cast<void**>(take(g * sizeof(void*)));
  t.lda = reinterpret_cast<int64_t*>(take(g * sizeof(int64_t)));
  t.ldb = reinterpret_cast<int64_t*>(take(g * sizeof(int64_t)));
  t.ldc = reinterpret_cast<int64_t*>(take(g * sizeof(int64_t)));
  t.ldd = reinterpret_cast<int64_t*>(take(g * sizeof(int64_t)));
  t.swap_ab = swap_ab;
  return t;
}

cudaError_t tables_from_ends_cuda(const TablesFromEnds& p, const GemmTables& t, cudaStream_t stream) {
  if (p.num_groups <= 0) return cudaSuccess;
  tables_from_ends_kernel<<<(p.num_groups + kThreads - 1) / kThreads, kThreads, 0, stream>>>(p, t);
  return cudaGetLastError();
}

void tables_from_ends_host(const TablesFromEnds& p, const GemmTables& t) {
  for (int g = 0; g < p.num_groups; ++g) table_from_ends(p, t, g);
}

void grouped_gemm_tables_host(const GemmTables& t, int groups, GemmEpilogue epilogue) {
  for (int g = 0; g < groups; ++g) {
    const int32_t* shape = t.shapes + 3 * g;
    const int64_t m = t.swap_ab ? shape[1] : shape[0];
    const int64_t n = t.swap_ab ? shape[0] : shape[1];
    const int64_t k = shape[2];
    const auto* rows = static_cast<const uint16_t*>(t.swap_ab ? t.b[g] : t.a[g]);
    const int64_t ld_rows = t.swap_ab ? t.ldb[g] : t.lda[g];
    const auto* weights = static_cast<const uint16_t*>(t.swap_ab ? t.a[g] : t.b[g]);
    const int64_t ld_weights = t.swap_ab ? t.lda[g] : t.ldb[g];
    const auto* c = static_cast<const uint16_t*>(t.c[g]);
    auto* d = static_cast<uint16_t*>(t.d[g]);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.0f;
        for (int64_t kk = 0; kk < k; ++kk) {
          acc += bf16_to_float(rows[i * ld_rows + kk]) * bf16_to_float(weights[j * ld_weights + kk]);
        }
        const float source = c != nullptr ? bf16_to_float(c[i * t.ldc[g] + j]) : 0.0f;
        d[i * t.ldd[g] + j] = float_to_bf16(apply_epilogue(epilogue, acc, source));
      }
    }
  }
}

}  // namespace moe
}  // namespace star_elastic
