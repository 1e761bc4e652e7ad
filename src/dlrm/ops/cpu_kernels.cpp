// CPU kernels for the parts of a DLRM step that are not matrix multiplies.
//
// Plain C ABI (called through ctypes with raw data pointers), no PyTorch headers: it compiles
// in ~2 s with any C++17 compiler, and dlrm/ops/native.py falls back to the
// PyTorch implementation when no compiler is found. Every function returns 0 on success and a
// negative code on bad input, and never writes outside the buffers it was given.
//
// Types: dtype code 0 = float32, 1 = bfloat16 (stored as uint16, computed in float32).
// Strides are in elements; the innermost (embedding) dimension is always contiguous.
//
// Threads: each call splits its batch (or its rows) over `num_threads` OpenMP threads (the
// caller passes torch.get_num_threads()); see parallel_for. Work is split by sample, or by row
// for the SGD update, so results never depend on the thread count.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using bf16 = uint16_t;

constexpr int64_t kLanes = 16;  // one AVX-512 register of floats
// 16 floats as one GCC/Clang vector (lowered to 2 or 4 registers on narrower CPUs); aligned(4)
// so loads and stores through it may be unaligned.
typedef float vec16 __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
struct alignas(64) Block16 { float lanes[kLanes]; };  // storage for vec16 in std::vector

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Round to nearest even, as torch's float -> bfloat16 conversion (NaN stays a quiet NaN).
// Branch-free, so loops over it vectorize.
inline bf16 to_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = (bits >> 16) | 0x40u;
  return static_cast<bf16>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

inline void store(float* p, float x) { *p = x; }
inline void store(bf16* p, float x) { *p = to_bf16(x); }

inline float round_bf16(float x) { return to_float(to_bf16(x)); }

// Elementwise passes split over threads only from this many elements on: PyTorch's own grain
// size (at::internal::GRAIN_SIZE). Below it, waking a thread costs more than it saves (tiny
// MLPs ran 12% slower threaded); above it, a thread left idle falls asleep and the next
// matmul pays to wake it (kaggle B=128).
constexpr int64_t kGrain = 32768;

// Run fn(begin, end) over [0, n) in up to num_threads contiguous chunks of at least min_chunk.
// With OpenMP the chunks run on the OpenMP runtime PyTorch has already loaded (libgomp.so.1
// is resolved to torch's copy), so they use its warm worker threads instead of competing
// with them; without OpenMP everything runs on the calling thread.
template <typename Fn>
void parallel_for(int64_t n, int num_threads, int64_t min_chunk, Fn fn) {
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(num_threads, (n + min_chunk - 1) / min_chunk));
#ifdef _OPENMP
  if (chunks > 1) {
    const int64_t step = (n + chunks - 1) / chunks;
#pragma omp parallel for num_threads(static_cast<int>(chunks)) schedule(static, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * step, end = std::min(n, begin + step);
      if (begin < end) fn(begin, end);
    }
    return;
  }
#endif
  fn(int64_t{0}, n);
}

// C (R, CB vectors) = A (R, K) * B (K, CB vectors): the small matrix product both interaction
// passes reduce to. A is read through strides (element (r, k) at A[r * rs + k * cs]) so a
// transposed A costs nothing. Tiles of 4 rows x 2 column vectors, or 8 rows x 1 vector: 8
// independent accumulators hide the FMA latency (one accumulator would wait on every FMA).
template <int RB, int CBN>
inline void gemm_tile(const float* A, int64_t rs, int64_t cs, const vec16* B, int64_t ldb,
                      vec16* C, int64_t ldc, int64_t K) {
  vec16 acc[RB][CBN] = {};
  for (int64_t k = 0; k < K; ++k) {
    vec16 b[CBN];
    for (int c = 0; c < CBN; ++c) b[c] = B[k * ldb + c];
    for (int r = 0; r < RB; ++r) {
      const float a = A[r * rs + k * cs];
      for (int c = 0; c < CBN; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < CBN; ++c) C[r * ldc + c] = acc[r][c];
}

template <int RB>
inline void gemm_rows(const float* A, int64_t rs, int64_t cs, const vec16* B, int64_t ldb,
                      vec16* C, int64_t ldc, int64_t K, int64_t CB) {
  int64_t c = 0;
  for (; c + 2 <= CB; c += 2) gemm_tile<RB, 2>(A, rs, cs, B + c, ldb, C + c, ldc, K);
  if (c < CB) gemm_tile<RB, 1>(A, rs, cs, B + c, ldb, C + c, ldc, K);
}

inline void small_gemm(const float* A, int64_t rs, int64_t cs, const vec16* B, int64_t ldb,
                       vec16* C, int64_t ldc, int64_t R, int64_t K, int64_t CB) {
  int64_t r = 0;
  if (CB == 1)  // one column vector: 8 rows at a time keep 8 accumulators in flight
    for (; r + 8 <= R; r += 8) gemm_rows<8>(A + r * rs, rs, cs, B, ldb, C + r * ldc, ldc, K, CB);
  for (; r + 4 <= R; r += 4) gemm_rows<4>(A + r * rs, rs, cs, B, ldb, C + r * ldc, ldc, K, CB);
  switch (R - r) {
    case 3: gemm_rows<3>(A + r * rs, rs, cs, B, ldb, C + r * ldc, ldc, K, CB); break;
    case 2: gemm_rows<2>(A + r * rs, rs, cs, B, ldb, C + r * ldc, ldc, K, CB); break;
    case 1: gemm_rows<1>(A + r * rs, rs, cs, B, ldb, C + r * ldc, ldc, K, CB); break;
    default: break;
  }
}

// The n = F + 1 vectors T = [x, e_1..e_F] of sample b as float rows V (n, D), rounded to
// bfloat16 when the interaction computes in bfloat16 (as the PyTorch path's cast does).
template <typename TD, typename TP>
inline void load_vectors(const TD* dense, int64_t dense_stride_b, const TP* pooled,
                         int64_t pooled_stride_b, int64_t pooled_stride_f, int64_t b,
                         int64_t F, int64_t D, bool round, float* V) {
  const TD* x = dense + b * dense_stride_b;
  for (int64_t d = 0; d < D; ++d) V[d] = to_float(x[d]);
  for (int64_t f = 0; f < F; ++f) {
    const TP* e = pooled + b * pooled_stride_b + f * pooled_stride_f;
    float* row = V + (f + 1) * D;
    for (int64_t d = 0; d < D; ++d) row[d] = to_float(e[d]);
  }
  if (round) {
    for (int64_t k = 0; k < (F + 1) * D; ++k) V[k] = round_bf16(V[k]);
  }
}

// out[b] = [x_b, (T_i . T_j) for i, j < i (j <= i with self)] in row-by-row order.
// Gram rows are computed 16 columns at a time from the transposed vectors VT (D, n_pad), so the
// inner loop is one vector FMA per (i, d) instead of a horizontal sum per pair.
template <typename TD, typename TP, typename TO>
void dot_forward(const TD* dense, int64_t dense_stride_b, const TP* pooled,
                 int64_t pooled_stride_b, int64_t pooled_stride_f, TO* out, int64_t B,
                 int64_t F, int64_t D, bool self_interaction, int num_threads) {
  const int64_t n = F + 1;
  const int64_t n_pad = (n + kLanes - 1) / kLanes * kLanes;
  const int64_t pairs = self_interaction ? n * (n + 1) / 2 : n * (n - 1) / 2;
  const int64_t width = D + pairs;
  const bool round = sizeof(TO) == 2;
  parallel_for(B, num_threads, 64, [=](int64_t begin, int64_t end) {
    const int64_t blocks = n_pad / kLanes;
    // VT[d * blocks + c] = lanes 16c..16c+15 of column d of V; G (n, blocks) the Gram rows.
    std::vector<Block16> vt_store(D * blocks, Block16{}), gram_store(n * blocks);
    float* vt = vt_store.data()->lanes;
    const vec16* VT = reinterpret_cast<const vec16*>(vt);
    vec16* G = reinterpret_cast<vec16*>(gram_store.data());
    // A bfloat16 output row is assembled in float and converted in one pass at the end: the
    // pair copies below then stay plain (vectorizable) copies, and the conversion one
    // branch-free loop, instead of a rounding per scattered store (1.4x the float kernel's
    // time before, on the kaggle shape).
    std::vector<float> row_store(round ? width : 0);
    // Only float pooled vectors need rounding: a bfloat16 computation has bfloat16 dense
    // vectors (the output's dtype is the dense one's), and bfloat16 values are exact.
    const bool round_pooled = round && sizeof(TP) == 4;
    for (int64_t b = begin; b < end; ++b) {
      // T = [x, e_1..e_F] straight into its transposed layout VT (D, n_pad): V itself is only
      // ever read as A (rows i, columns d), which VT serves through strides (1, n_pad).
      const TD* x = dense + b * dense_stride_b;
      for (int64_t d = 0; d < D; ++d) vt[d * n_pad] = to_float(x[d]);
      for (int64_t f = 0; f < F; ++f) {
        const TP* e = pooled + b * pooled_stride_b + f * pooled_stride_f;
        for (int64_t d = 0; d < D; ++d) vt[d * n_pad + f + 1] = to_float(e[d]);
      }
      // Float pooled vectors of a bfloat16 computation are rounded in one contiguous pass over
      // VT (vectorizes; the bfloat16 x column and the zero padding round to themselves).
      if (round_pooled)
        for (int64_t k = 0; k < D * n_pad; ++k) vt[k] = round_bf16(vt[k]);
      TO* const out_row = out + b * width;
      float* row_f = round ? row_store.data() : reinterpret_cast<float*>(out_row);
      float* row = row_f;
      for (int64_t d = 0; d < D; ++d) row[d] = to_float(x[d]);  // x, exactly
      row += D;
      // The Gram matrix G (n, n_pad) = V VT, 8 rows at a time and only the 16-column blocks
      // that hold lower-triangle entries of those rows; then the pairs in row-by-row order.
      for (int64_t r = 0; r < n; r += 8) {  // rows r..r+7 need columns < r+8 (r+9 with self)
        const int64_t rows = std::min<int64_t>(8, n - r);
        const int64_t cols = std::min(n, r + rows + (self_interaction ? 0 : -1));
        small_gemm(vt + r, 1, n_pad, VT, blocks, G + r * blocks, blocks, rows, D,
                   (cols + kLanes - 1) / kLanes);
      }
      const float* gram = gram_store.data()->lanes;
      for (int64_t i = self_interaction ? 0 : 1; i < n; ++i) {
        const int64_t count = self_interaction ? i + 1 : i;  // pairs (i, 0..count-1)
        for (int64_t j = 0; j < count; ++j) row[j] = gram[i * n_pad + j];
        row += count;
      }
      if (round)
        for (int64_t k = 0; k < width; ++k) store(out_row + k, row_f[k]);
    }
  });
}

// Gradient of dot_forward. With g_ij the gradient of pair (i, j), S is symmetric with
// S_ij = S_ji = g_ij (S_ii = 2 g_ii with self), and dL/dT = S T; dL/dx adds grad_out[:, :D].
template <typename TG, typename TD, typename TP>
void dot_backward(const TG* grad_out, int64_t grad_stride_b, const TD* dense,
                  int64_t dense_stride_b, const TP* pooled, int64_t pooled_stride_b,
                  int64_t pooled_stride_f, TD* grad_dense, TP* grad_pooled, int64_t B,
                  int64_t F, int64_t D, bool self_interaction, bool round, int num_threads) {
  const int64_t n = F + 1;
  parallel_for(B, num_threads, 64, [=](int64_t begin, int64_t end) {
    std::vector<float> V(n * D), S(n * n), grad_v(n * D);
    for (int64_t b = begin; b < end; ++b) {
      load_vectors(dense, dense_stride_b, pooled, pooled_stride_b, pooled_stride_f, b, F, D,
                   round, V.data());
      const TG* g = grad_out + b * grad_stride_b;
      // Every off-diagonal entry of S is written exactly once (by pair (i, j) or (j, i)) and
      // the diagonal explicitly, so S needs no zero fill and no read-modify-write.
      int64_t k = D;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < i; ++j, ++k) {
          float s = to_float(g[k]);
          if (round && sizeof(TG) == 4) s = round_bf16(s);
          S[i * n + j] = s;
          S[j * n + i] = s;
        }
        float diagonal = 0.0f;
        if (self_interaction) {
          diagonal = to_float(g[k++]);
          if (round && sizeof(TG) == 4) diagonal = round_bf16(diagonal);
        }
        S[i * n + i] = 2.0f * diagonal;
      }
      if (D % kLanes == 0)  // grad_V (n, D) = S (n, n) V (n, D) in one small product
        small_gemm(S.data(), n, 1, reinterpret_cast<const vec16*>(V.data()), D / kLanes,
                   reinterpret_cast<vec16*>(grad_v.data()), D / kLanes, n, n, D / kLanes);
      else
        for (int64_t i = 0; i < n; ++i)
          for (int64_t d = 0; d < D; ++d) {
            float sum = 0.0f;
            for (int64_t j = 0; j < n; ++j) sum += S[i * n + j] * V[j * D + d];
            grad_v[i * D + d] = sum;
          }
      for (int64_t i = 0; i < n; ++i) {
        const float* acc = grad_v.data() + i * D;
        if (i == 0) {
          TD* gx = grad_dense + b * D;
          for (int64_t d = 0; d < D; ++d) store(gx + d, acc[d] + to_float(g[d]));
        } else {
          TP* ge = grad_pooled + (b * F + (i - 1)) * D;
          for (int64_t d = 0; d < D; ++d) store(ge + d, acc[d]);
        }
      }
    }
  });
}

// weight[ids[k]] += neg_lr * rows[k] for k in order: duplicates accumulate. Thread t owns the
// ids with (id / 8) % T == t (8 rows: whole cache lines even for D = 2), so no two threads
// touch one row. First each thread lists, for its slice of k, the k of each owner (in order);
// then each owner applies its lists slice by slice: the updates of any row run in the order
// of k, whatever T, with no branch on ownership in the update loop and the rows ahead
// prefetched (they are random rows of tables far larger than the cache). fp-contract off:
// (neg_lr * g) is rounded before the add, as PyTorch's scatter_add_(rows * -lr) computes it,
// so both paths agree to the bit.
template <typename TR>
__attribute__((optimize("fp-contract=off"))) void sgd_rows_listed(
    float* weight, int64_t weight_stride, const int64_t* ids, const int64_t* ks, int64_t count,
    const TR* rows, int64_t rows_stride, int64_t D, float neg_lr) {
  constexpr int64_t kAhead = 32;  // rows ahead to prefetch (measured best of 16..128)
  for (int64_t i = 0; i < count; ++i) {
    if (i + kAhead < count) __builtin_prefetch(weight + ids[ks[i + kAhead]] * weight_stride, 1);
    const int64_t k = ks[i];
    float* w = weight + ids[k] * weight_stride;
    const TR* r = rows + k * rows_stride;
    for (int64_t d = 0; d < D; ++d) {
      const float step = neg_lr * to_float(r[d]);
      w[d] = w[d] + step;
    }
  }
}

template <typename TR>
void sgd_rows(float* weight, int64_t weight_stride, const int64_t* ids, int64_t n,
              const TR* rows, int64_t rows_stride, int64_t D, float neg_lr, int num_threads) {
  const int64_t threads = std::min<int64_t>(num_threads, std::max<int64_t>(1, n / 4096));
  std::vector<int64_t> all;
  if (threads == 1) {
    all.resize(n);
    for (int64_t k = 0; k < n; ++k) all[k] = k;
    sgd_rows_listed(weight, weight_stride, ids, all.data(), n, rows, rows_stride, D, neg_lr);
    return;
  }
  // lists[slice * T + owner]: the k of slice `slice` whose row `owner` updates, in order.
  std::vector<std::vector<int64_t>> lists(threads * threads);
  const int64_t slice_size = (n + threads - 1) / threads;
  // (Each lambda loops over its range: without OpenMP, parallel_for calls it once for all.)
  parallel_for(threads, static_cast<int>(threads), 1, [&](int64_t first, int64_t last) {
    for (int64_t slice = first; slice < last; ++slice) {
      const int64_t begin = slice * slice_size, end = std::min(n, begin + slice_size);
      for (int64_t owner = 0; owner < threads; ++owner)
        lists[slice * threads + owner].reserve((end - begin) / threads * 5 / 4 + 16);
      for (int64_t k = begin; k < end; ++k)
        lists[slice * threads + (ids[k] >> 3) % threads].push_back(k);
    }
  });
  parallel_for(threads, static_cast<int>(threads), 1, [&](int64_t first, int64_t last) {
    for (int64_t owner = first; owner < last; ++owner)
      for (int64_t slice = 0; slice < threads; ++slice) {
        const std::vector<int64_t>& ks = lists[slice * threads + owner];
        sgd_rows_listed(weight, weight_stride, ids, ks.data(), static_cast<int64_t>(ks.size()),
                        rows, rows_stride, D, neg_lr);
      }
  });
}

// The one-hot lookup: for sample b and feature f, the row id = table_offsets[f] + values[f*B + b]
// (values feature-major, as SparseFeatures stores them) goes to ids[b*F + f] and its D floats
// to out[b*F + f] (sample-major: the (B, F, D) layout the interaction reads). One pass instead
// of an add, a transposing copy of the ids and a gather.
void lookup_one_hot(const float* weight, int64_t weight_stride, const int64_t* table_offsets,
                    const int64_t* values, int64_t B, int64_t F, float* out, int64_t* ids,
                    int64_t D, int num_threads) {
  parallel_for(B, num_threads, 256, [=](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t f = 0; f < F; ++f) {
        if (b + 1 < end)  // the next sample's row: ~F rows ahead (random rows, far from cache)
          __builtin_prefetch(weight + (table_offsets[f] + values[f * B + b + 1]) * weight_stride);
        const int64_t id = table_offsets[f] + values[f * B + b];
        ids[b * F + f] = id;
        std::memcpy(out + (b * F + f) * D, weight + id * weight_stride, D * sizeof(float));
      }
    }
  });
}

// Whether every values[f*B + b] lies in [0, rows of table f).
bool values_in_tables(const int64_t* table_offsets, const int64_t* values, int64_t B,
                      int64_t F) {
  int64_t bad = 0;
  for (int64_t f = 0; f < F; ++f) {
    const int64_t rows = table_offsets[f + 1] - table_offsets[f];
    const int64_t* v = values + f * B;
    for (int64_t b = 0; b < B; ++b) bad |= (v[b] < 0) | (v[b] >= rows);
  }
  return bad == 0;
}

// out[r, c] = act(out[r, c] + bias[c]) in place: the epilogue of a Linear layer whose matmul
// ran without its bias (torch.addmm would first copy the broadcast bias into the output, a
// full extra pass, and ReLU would be another). act is ReLU or the identity; NaN stays NaN,
// as torch.relu keeps it.
template <typename T>
void bias_act(T* out, int64_t stride, int64_t R, int64_t C, const float* bias, bool relu,
              int num_threads) {
  parallel_for(R, num_threads, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)),
               [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = out + r * stride;
      if (relu) {
        for (int64_t c = 0; c < C; ++c) {
          const float v = to_float(row[c]) + bias[c];
          store(row + c, v < 0.0f ? 0.0f : v);
        }
      } else {
        for (int64_t c = 0; c < C; ++c) store(row + c, to_float(row[c]) + bias[c]);
      }
    }
  });
}

// The backward epilogue of Linear + act: masked[r, c] = grad[r, c] where act_out[r, c] > 0
// (or everywhere without ReLU; NaN passes, as threshold_backward lets it), written to masked
// (which may be grad itself), and bias_grad[c] = sum_r masked[r, c] in float32. One pass
// instead of threshold_backward's new buffer plus a separate sum. Partial sums over up to 16
// blocks of rows (at least 32 rows each; the split depends on R only), added in block order:
// the result does not depend on the thread count. Threads split the blocks from kGrain
// elements on.
template <typename TG, typename TA>
void act_bias_backward(const TG* grad, int64_t grad_stride, const TA* act_out,
                       int64_t act_stride, TG* masked, int64_t masked_stride, int64_t R,
                       int64_t C, bool relu, float* bias_grad, int num_threads) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(16, R / 32));
  const int64_t block_rows = (R + blocks - 1) / blocks;
  std::vector<float> partial(blocks * C, 0.0f);
  float* partials = partial.data();
  const int64_t min_blocks = std::max<int64_t>(1, kGrain / std::max<int64_t>(block_rows * C, 1));
  parallel_for(blocks, num_threads, min_blocks, [=](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      float* sum = partials + blk * C;
      for (int64_t r = blk * block_rows; r < std::min(R, (blk + 1) * block_rows); ++r) {
        const TG* g = grad + r * grad_stride;
        if (relu) {
          const TA* a = act_out + r * act_stride;
          TG* m = masked + r * masked_stride;
          for (int64_t c = 0; c < C; ++c) {  // the stored value is g or 0 exactly: no rounding
            const bool pass = !(to_float(a[c]) <= 0.0f);
            m[c] = pass ? g[c] : TG(0);
            sum[c] += pass ? to_float(g[c]) : 0.0f;
          }
        } else {
          for (int64_t c = 0; c < C; ++c) sum[c] += to_float(g[c]);
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) bias_grad[c] = 0.0f;
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t c = 0; c < C; ++c) bias_grad[c] += partials[blk * C + c];
}

bool ids_in_range(const int64_t* ids, int64_t n, int64_t num_rows) {
  int64_t bad = 0;
  for (int64_t k = 0; k < n; ++k) bad |= (ids[k] < 0) | (ids[k] >= num_rows);
  return bad == 0;
}

// Calls fn with a value of the element type of dtype code `code` (0 float32, 1 bfloat16) and
// returns what fn returns; false for an unknown code. The C entry points nest it, one level per
// tensor whose dtype varies, with generic lambdas (`using T = decltype(tag)`).
template <typename Fn>
bool with_dtype(int code, Fn fn) {
  if (code == 0) return fn(float{});
  if (code == 1) return fn(bf16{});
  return false;
}

// out (R, C) uint8 = clamp(nearbyint(x * inv_scale) + zero_point, 0, 255): affine uint8
// codes of an int8 layer's input, rounded half to even. inv_scale is a float, so this is the
// arithmetic of PyTorch's `torch.round(x * (1 / scale))` in float32, to the bit.
template <typename T>
inline void quantize_span(const T* __restrict x, uint8_t* __restrict out, int64_t n, float inv,
                          float zp) {
  for (int64_t k = 0; k < n; ++k) {
    // Clipped to +-256 first (every code stays in reach; NaN goes to the low end), then
    // rounded half to even by the 1.5 * 2^23 trick: exact for |v| < 2^22 and branch-free, so
    // the loop vectorizes (nearbyintf and lrintf stay libm calls here).
    float v = to_float(x[k]) * inv;
    v = v > -256.0f ? v : -256.0f;
    v = v < 256.0f ? v : 256.0f;
    const float q = ((v + 12582912.0f) - 12582912.0f) + zp;
    out[k] = static_cast<uint8_t>(std::min(std::max(q, 0.0f), 255.0f));
  }
}

template <typename T>
void quantize_u8(const T* x, int64_t stride, int64_t R, int64_t C, float inv_scale,
                 float zero_point, uint8_t* out, int num_threads) {
  // Contiguous rows are one span (a 13-wide row is shorter than one vector of 16 floats).
  const bool flat = stride == C;
  parallel_for(R, num_threads, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)),
               [=](int64_t begin, int64_t end) {
    if (flat) {
      quantize_span(x + begin * C, out + begin * C, (end - begin) * C, inv_scale, zero_point);
      return;
    }
    for (int64_t r = begin; r < end; ++r)
      quantize_span(x + r * stride, out + r * C, C, inv_scale, zero_point);
  });
}

}  // namespace

extern "C" {

// x (R, C) in x_dtype, rows `stride` apart; out (R, C) contiguous uint8 (see quantize_u8).
int dlrm_quantize_u8(const void* x, int x_dtype, int64_t stride, int64_t R, int64_t C,
                     float inv_scale, float zero_point, uint8_t* out, int num_threads) {
  if (R < 0 || C < 0 || stride < C) return -1;
  const bool ok = with_dtype(x_dtype, [&](auto x_tag) {
    using T = decltype(x_tag);
    quantize_u8(static_cast<const T*>(x), stride, R, C, inv_scale, zero_point, out,
                num_threads);
    return true;
  });
  return ok ? 0 : -2;
}

// dtype codes: 0 float32, 1 bfloat16. out (B, D + P) has out_dtype == dense_dtype.
int dlrm_dot_forward(const void* dense, int dense_dtype, int64_t dense_stride_b,
                     const void* pooled, int pooled_dtype, int64_t pooled_stride_b,
                     int64_t pooled_stride_f, void* out, int64_t B, int64_t F, int64_t D,
                     int self_interaction, int num_threads) {
  if (B < 0 || F < 0 || D <= 0) return -1;
  const bool ok = with_dtype(dense_dtype, [&](auto dense_tag) {
    using TD = decltype(dense_tag);
    return with_dtype(pooled_dtype, [&](auto pooled_tag) {
      using TP = decltype(pooled_tag);
      dot_forward(static_cast<const TD*>(dense), dense_stride_b, static_cast<const TP*>(pooled),
                  pooled_stride_b, pooled_stride_f, static_cast<TD*>(out), B, F, D,
                  self_interaction != 0, num_threads);
      return true;
    });
  });
  return ok ? 0 : -2;
}

// grad_dense (B, D) in dense_dtype, grad_pooled (B, F, D) contiguous in pooled_dtype; the
// computation rounds vectors and pair gradients to bfloat16 when dense_dtype is bfloat16.
int dlrm_dot_backward(const void* grad_out, int grad_dtype, int64_t grad_stride_b,
                      const void* dense, int dense_dtype, int64_t dense_stride_b,
                      const void* pooled, int pooled_dtype, int64_t pooled_stride_b,
                      int64_t pooled_stride_f, void* grad_dense, void* grad_pooled, int64_t B,
                      int64_t F, int64_t D, int self_interaction, int num_threads) {
  if (B < 0 || F < 0 || D <= 0) return -1;
  const bool ok = with_dtype(grad_dtype, [&](auto grad_tag) {
    using TG = decltype(grad_tag);
    return with_dtype(dense_dtype, [&](auto dense_tag) {
      using TD = decltype(dense_tag);
      return with_dtype(pooled_dtype, [&](auto pooled_tag) {
        using TP = decltype(pooled_tag);
        dot_backward(static_cast<const TG*>(grad_out), grad_stride_b,
                     static_cast<const TD*>(dense), dense_stride_b,
                     static_cast<const TP*>(pooled), pooled_stride_b, pooled_stride_f,
                     static_cast<TD*>(grad_dense), static_cast<TP*>(grad_pooled), B, F, D,
                     self_interaction != 0, /*round=*/dense_dtype == 1, num_threads);
        return true;
      });
    });
  });
  return ok ? 0 : -2;
}

// Sparse SGD on a float32 weight; -3 when an id is outside [0, num_rows) (nothing written).
int dlrm_sgd_rows(void* weight, int64_t weight_stride, int64_t num_rows, const int64_t* ids,
                  int64_t n, const void* rows, int rows_dtype, int64_t rows_stride, int64_t D,
                  float neg_lr, int num_threads) {
  if (!ids_in_range(ids, n, num_rows)) return -3;
  const bool ok = with_dtype(rows_dtype, [&](auto rows_tag) {
    using TR = decltype(rows_tag);
    sgd_rows(static_cast<float*>(weight), weight_stride, ids, n, static_cast<const TR*>(rows),
             rows_stride, D, neg_lr, num_threads);
    return true;
  });
  return ok ? 0 : -2;
}

// One-hot lookup of float32 rows (see lookup_one_hot); -3 when a value is outside its table
// (nothing written). table_offsets has F + 1 entries, the last one the weight's row count.
int dlrm_lookup_one_hot(const void* weight, int64_t weight_stride, const int64_t* table_offsets,
                        const int64_t* values, int64_t B, int64_t F, void* out, int64_t* ids,
                        int64_t D, int num_threads) {
  if (B < 0 || F < 0 || D <= 0) return -1;
  if (!values_in_tables(table_offsets, values, B, F)) return -3;
  lookup_one_hot(static_cast<const float*>(weight), weight_stride, table_offsets, values, B, F,
                 static_cast<float*>(out), ids, D, num_threads);
  return 0;
}

// out (R, C) in out_dtype (rows of C contiguous values, row stride `stride`) gets the float32
// bias added and, with relu != 0, ReLU applied, in place.
int dlrm_bias_act(void* out, int out_dtype, int64_t stride, int64_t R, int64_t C,
                  const float* bias, int relu, int num_threads) {
  if (R < 0 || C < 0 || stride < C) return -1;
  const bool ok = with_dtype(out_dtype, [&](auto out_tag) {
    using T = decltype(out_tag);
    bias_act(static_cast<T*>(out), stride, R, C, bias, relu != 0, num_threads);
    return true;
  });
  return ok ? 0 : -2;
}

// grad, masked: (R, C) in grad_dtype; act_out: (R, C) in act_dtype (the layer's output after
// ReLU); bias_grad: C float32. With relu == 0, masked is not written (it would equal grad).
int dlrm_act_bias_backward(const void* grad, int grad_dtype, int64_t grad_stride,
                           const void* act_out, int act_dtype, int64_t act_stride, void* masked,
                           int64_t masked_stride, int64_t R, int64_t C, int relu,
                           float* bias_grad, int num_threads) {
  if (R < 0 || C < 0) return -1;
  const bool ok = with_dtype(grad_dtype, [&](auto grad_tag) {
    using TG = decltype(grad_tag);
    return with_dtype(act_dtype, [&](auto act_tag) {
      using TA = decltype(act_tag);
      act_bias_backward(static_cast<const TG*>(grad), grad_stride,
                        static_cast<const TA*>(act_out), act_stride, static_cast<TG*>(masked),
                        masked_stride, R, C, relu != 0, bias_grad, num_threads);
      return true;
    });
  });
  return ok ? 0 : -2;
}

}  // extern "C"
