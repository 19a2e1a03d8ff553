// Fused CUDA kernels for the general contrastive op and its variants (denominator "negatives" / "per_positive",
// positive_weight: synthcl_fast/variants.py); the math (s_ij, m_i, log S_i, L_i, G_ij and the gradients) is
// stated once, in synthcl_fast/reference.py; the op contract in synthcl_fast/backends/_ops.py. Registered for the
// CUDA dispatch key with the same schemas and results as contrastive_cpu.cpp. The variants run the same passes:
// the denominator is a mask in the online statistics (TileParams::denominator), the backward's G_ij one formula
// for all of them (element_gradient), and "per_positive" adds a positives' pass (TileParams::positive_pass) once
// m and S are final. HCL (the hard_negative_stats op: beta / tau_plus) runs the same passes too (TileParams::hard):
// the forward keeps per row the three sets' references and float64 sums online (merged over the splits by
// finish_hard_kernel), the backward's G_ij is hard_element_gradient. Not yet run on a GPU (no GPU has been lent to
// this project); the conformance suite's cuda lane is what checks them.
//
// Passes (all on the current stream, no R x K buffer, no float atomics: deterministic):
//   1. prepare_rows_kernel: 16-bit copies of the rows scaled by a power of two, x~ = x 2^-k with ||x~|| in
//      [1, 2) (exact: only the exponent changes; bf16 and fp32 rows, whose raw products could overflow fp32;
//      fp16 rows are copied as they are), rows padded with zeros to a multiple of 64 rows and of kChunk
//      columns; per row inv = 2^k / max(||x||, eps) (so u = x~ inv) and the norm (float64). The logits are
//      s = (x~_i . y~_j) (inv_i / t) inv_j: 16-bit inputs enter the products exactly, so the loss value of a
//      16-bit input has fp32 accuracy.
//   2. contrastive_tile_kernel<kGrad = false>: each CTA owns 64 anchor rows ("owner" rows) and streams
//      64-row tiles of candidates through a 3-stage cp.async ring; S = U V^T / t on tensor cores
//      (mma.sync m16n8k16, fp32 accumulators), labels / -1 / self-exclusion per tile, online
//      row statistics in fp32 (max m, S = sum exp(s - m), the positive gap sum_p (s_p - m) moved with m,
//      |P|). Small R: the candidates are split over gridDim.y and the partial statistics merged by
//      finish_forward_kernel.
//   3. Backward (recomputation), the same kernel with kGrad = true, twice:
//        owner = anchors, streamed = candidates: dU (and sum_j G_ij s_ij for dL/dt), row-parallel;
//        owner = candidates, streamed = anchors: dV, column-parallel.
//      Per tile: S again, G in registers, scaled by the streamed rows' inv (G_ij v_j = (G_ij inv_j) x~_j),
//      then (as the A operand, straight from the accumulators) times the streamed rows x~ (ldmatrix.trans)
//      into fp32 accumulators of one 128-column panel of D; D > 128
//      loops over panels (recomputing S). Partials per split go to fp32 scratch; input_grad_kernel sums
//      them in a fixed order and applies the normalization backward in the input dtype.
//
// Precision. bf16 and fp16 inputs enter the logits' products exactly; G is rounded to the input's 16-bit
// type for the gradient products (fp32 accumulation). fp32 inputs: every operand is split into bf16 hi + lo
// parts and each product takes three passes (hi*hi + hi*lo + lo*hi), ~2^-17 relative error per element;
// single-pass TF32 (2^-11) would miss the 3e-4 target on the gradients. For the dV product G is scaled by
// w_i / max_i |w_i| so it stays in [-1, 1] (fp16 would lose small upstream weights otherwise).
// float64 inputs are not taken (the CPU or reference backends are).
//
// Instructions: mma.sync, ldmatrix and cp.async of sm_80, so one source serves sm_80 and sm_90a (HMMA in
// the SASS of both; .ci/compile_cuda.sh checks). Hopper's wgmma / TMA path (HGMMA) is not written yet:
// it was not to be shipped without a GPU to validate it on.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common.h"
#include "cuda_utils.cuh"

namespace synthcl_fast {
namespace {

using namespace cuda;

constexpr int kThreads = 128;        // 4 warps; warp w owns rows 16w..16w+15 of the CTA's 64 owner rows
constexpr int kOwnerRows = 64;
constexpr int kTileRows = 64;        // streamed rows per tile
constexpr int kChunk = 64;           // columns of D per pipeline stage (128 bytes of 16-bit elements)
constexpr int kStages = 3;
constexpr int kPanelChunks = 2;      // gradient accumulators cover 128 columns of D at a time
constexpr int kChunkRowBytes = kChunk * 2 + 16;            // +16: ldmatrix rows hit distinct banks
constexpr int kTileBytes = kTileRows * kChunkRowBytes;     // one 64 x 64 chunk of one part
// Per tile a meta block: labels (int64), inv (float), and the streamed rows' RowStats in the pass that reads them
// (the candidates' gradient); byte offsets in the block:
constexpr int kMetaInv = kTileRows * 8;
constexpr int kMetaStats = kTileRows * (8 + 4);
constexpr int kSplitTargetCtasPerSm = 2;

// Denominator codes of the variant ops (bindings.cpp): common.h's Denominator (kAll, kNegatives, kPerPositive).

// Per streamed/owner row statistics for the backward (all 0 for a row without positives): with
// x_ij = s_ij - max_i - log_sum_i (= s_ij - lse_i), the gradient of L_i w.r.t. s_ij without the upstream weight is
//   j in the denominator (den):  coef e^{x_ij}
//   j in P(i):                   + sigmoid_scale sigmoid(x_ij) - positive_term
//     plain op (den = all):      coef 1,   sigmoid_scale 0,     positive_term 1/|P|
//     "negatives" (den = Neg):   coef 1,   sigmoid_scale 0,     positive_term w'_i/|P|
//     "per_positive" (Neg):      coef c_i, sigmoid_scale 1/|P|, positive_term w'_i/|P|
// (L_i = mean_p softplus(lse_Neg - s_ip) + (1 - w'_i) mean_p s_ip: dL/ds_ip = (sigmoid(s_ip - lse_Neg) - w'_i)/|P|,
// dL/dlse_Neg = mean_p sigmoid(lse_Neg - s_ip) = c_i). weight: the upstream dLoss/dL_i.
// HCL (TileParams::hard, the hard_negative_stats op) uses max = rho_i (the row's reference for dL/dt), weight =
// w_i = sum_k |a_k|, and per set k its reference r_k, log S_k and the coefficients a_k / w_i of
// hard_element_gradient (hard_row_stats_kernel). Four 16-byte pieces.
struct RowStats {
  float max, log_sum, coef, sigmoid_scale, positive_term, weight;
  float hard_ref[kHardSets], hard_log_sum[kHardSets], hard_coef[kHardSets + 1];
};
static_assert(sizeof(RowStats) == 64, "RowStats is copied as four 16-byte pieces");
constexpr int kRowStatsFloats = sizeof(RowStats) / sizeof(float);

// The per-element G above (without the weight); in_denominator and positive already include validity.
__device__ __forceinline__ float element_gradient(float x, bool in_denominator, bool positive, const RowStats& st) {
  float g = in_denominator ? st.coef * exp2f(x * kLog2e) : 0.0f;  // a positive out of den: x > 0 possible, not used
  if (positive) {
    g -= st.positive_term;
    if (st.sigmoid_scale != 0.0f) {
      const float e = exp2f(-fabsf(x) * kLog2e);  // sigmoid without overflow
      g += st.sigmoid_scale * (x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e));
    }
  }
  return g;
}

// HCL's G_ij (csrc/contrastive_cpu.cpp, "Hard negatives and debiasing", states it), upstream included; c: the
// scales c_0 = 1 + beta, c_1 = beta of the negatives' sets. Every exponent is <= 0 (r_k is the extreme of its set
// in the direction of c_k, log S_k >= 0); an empty set has no member, so its exponent is never taken.
//   j in Neg(i):  a_0 e^{c_0 (s_ij - r_0) - log S_0} + a_1 e^{c_1 (s_ij - r_1) - log S_1}
//   j in P(i):    a_2 e^{(s_ij - r_2) - log S_2} + a_3                       (a_3 = dLoss/dY_i / |P(i)|)
__device__ __forceinline__ float hard_element_gradient(float s, bool negative, bool positive, const RowStats& st,
                                                       const float (&c)[2]) {
  if (negative)
    return st.hard_coef[0] * exp2f((c[0] * (s - st.hard_ref[0]) - st.hard_log_sum[0]) * kLog2e) +
           st.hard_coef[1] * exp2f((c[1] * (s - st.hard_ref[1]) - st.hard_log_sum[1]) * kLog2e);
  if (positive) return st.hard_coef[2] * exp2f((s - st.hard_ref[2] - st.hard_log_sum[2]) * kLog2e) + st.hard_coef[3];
  return 0.0f;
}

// HCL's reference of a set with scale c is the max of its logits for c >= 0, the min for c < 0 (so every exponent
// c (s - r) is <= 0): the reference of two references a, b (online, and over the splits).
__device__ __forceinline__ float extreme_along(float c, float a, float b) {
  return c >= 0.0f ? fmaxf(a, b) : fminf(a, b);
}

// Online statistics of one row over one split of the candidates: max m, S = sum exp(s - m) over the denominator,
// the positive gap sum_p (s_p - m) (relative to 0 while m is -inf: the variants' positives are not in the
// denominator), |P|. S is summed in float64: in float32 every term added to a running S near 1 (the max's
// own term) would round at 1.2e-7 of S, most of a small loss log S ~ S - 1. The positives' pass of
// "per_positive" stores sum_p softplus(z_ip) in sum_exp and sum_p sigmoid(z_ip) in positive_gap.
struct RowPartial {
  double sum_exp;
  float max, positive_gap;
  int positives, unused;
};
constexpr int kRowPartialFloats = sizeof(RowPartial) / sizeof(float);

// HCL's statistics of one row over one split: per set k the reference r_k (bit k of has_ref once the set has had
// a finite logit; 0 before) and S_k = sum e^{c_k (s - r_k)} (float64, as RowPartial), sum_p s_ip, |Neg|, |P|.
struct HardPartial {
  double sum[kHardSets];
  double positive_sum;
  float ref[kHardSets];
  int negatives, positives;
  unsigned has_ref;
};
constexpr int kHardPartialFloats = sizeof(HardPartial) / sizeof(float);
static_assert(sizeof(HardPartial) % 8 == 0, "HardPartial is stored as an array");

struct TileParams {
  const uint16_t* owner[2];      // prepared owner rows x~, [owner_pad][dim_pad], parts hi (and lo)
  const uint16_t* stream[2];     // prepared streamed rows, [stream_pad][dim_pad]
  const float* owner_inv;        // [owner_pad] 2^k / max(||x||, eps) (0 for padding rows)
  const float* stream_inv;       // [stream_pad]
  const int64_t* owner_labels;   // [owner_pad]
  const int64_t* stream_labels;  // [stream_pad]
  const RowStats* owner_stats;   // gradient of the anchors: stats of the owner rows
  const RowStats* stream_stats;  // gradient of the candidates: stats of the streamed (anchor) rows
  const float* temperature;
  const float* weight_max;       // max_i of |w_i| times the bound on |G'_ij| (gradient of the candidates)
  int64_t n_owner, n_stream, dim_pad;
  int tiles_per_split;
  int denominator;               // Denominator: which candidates the log-sum-exp runs over
  bool exclude_self, owner_resident, stats_on_owner;
  bool positive_pass;            // forward, "per_positive": the positives' softplus / sigmoid sums (owner_stats)
  bool hard;                     // HCL: the hard_negative_stats op's statistics (forward) or G (backward)
  float hard_scale[2];           // HCL: c_0 = 1 + beta, c_1 = beta
  RowPartial* partial;           // forward: [splits][owner_pad]
  HardPartial* hard_partial;     // forward, hard: [splits][owner_pad]
  float* grad;                   // backward: [splits][owner_pad][dim_pad], dL/d(normalized owner rows)
  float* row_gs;                 // backward, stats_on_owner: [splits][owner_pad], w_i sum_j G'_ij s_ij
};

// ============================================================================================
// Pass 1: the rows scaled by a power of two into 16-bit copies (fp32 inputs: bf16 hi and lo parts).
// One warp per padded row; the squares are summed in float64 as in the CPU kernel.
// ============================================================================================
template <typename T, typename Mma, bool kSplit>
__global__ void prepare_rows_kernel(const T* __restrict__ x, int64_t n_rows, int64_t dim, int64_t n_rows_pad,
                                    int64_t dim_pad, double eps, uint16_t* __restrict__ hi, uint16_t* __restrict__ lo,
                                    double* __restrict__ norms, float* __restrict__ inv) {
  // fp16 rows cannot overflow an fp32 accumulator (|x| <= 65504) and are copied exactly as they are
  constexpr bool kPrescale = !std::is_same_v<T, c10::Half>;
  const int lane = threadIdx.x % 32;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= n_rows_pad) return;
  const bool real = row < n_rows;
  const T* xr = x + row * dim;
  double squares = 0;
  if (real)
    for (int64_t d = lane; d < dim; d += 32) {
      const double v = to_float(xr[d]);
      squares += v * v;
    }
  squares = warp_sum(squares);
  const double clamped = fmax(sqrt(squares), eps);
  int exponent = 0;  // clamped = f 2^exponent with f in [0.5, 1): 2^(exponent - 1) <= clamped
  frexp(clamped, &exponent);
  const int k = kPrescale ? min(max(exponent - 1, -126), 126) : 0;
  const double scale = ldexp(1.0, -k);
  if (real && lane == 0) {
    norms[row] = clamped;
    inv[row] = static_cast<float>(1.0 / (clamped * scale));
  } else if (!real && lane == 0) {
    inv[row] = 0.0f;
  }
  for (int64_t d = lane; d < dim_pad; d += 32) {
    const float scaled = real && d < dim ? static_cast<float>(to_float(xr[d]) * scale) : 0.0f;  // exact
    const uint16_t h = Mma::from_float(scaled);
    hi[row * dim_pad + d] = h;
    if constexpr (kSplit) lo[row * dim_pad + d] = Mma::from_float(scaled - Mma::to_float(h));
  }
}

// ============================================================================================
// Passes 2 and 3: the tile kernel. kGrad = false: forward statistics; true: gradient of the owner rows.
// ============================================================================================
template <bool kSplit>
struct SmemLayout {
  static constexpr int kParts = kSplit ? 2 : 1;
  int64_t owner_row_bytes, resident_bytes, stage_bytes, meta_bytes, total;
  __host__ __device__ SmemLayout(int64_t dim_pad, bool owner_resident, bool stream_stats) {
    owner_row_bytes = dim_pad * 2 + 16;
    resident_bytes = owner_resident ? kParts * kOwnerRows * owner_row_bytes : 0;
    stage_bytes = kParts * kTileBytes + (owner_resident ? 0 : kParts * kOwnerRows * kChunkRowBytes);
    meta_bytes = kMetaStats + (stream_stats ? kTileRows * static_cast<int64_t>(sizeof(RowStats)) : 0);
    total = resident_bytes + kStages * stage_bytes + kStages * meta_bytes;
  }
};

// Issues the cp.async copies of the pipeline, one job (a 64 x kChunk chunk of the streamed tile, plus the
// owner chunk when the owner rows are not resident, plus the tile's labels and stats at its first job)
// per call, in exactly the order the consumer loop of contrastive_tile_kernel takes them.
template <bool kSplit, bool kGrad>
struct Producer {
  static constexpr int kParts = kSplit ? 2 : 1;
  const TileParams& p;
  unsigned char* stages;
  unsigned char* meta;
  SmemLayout<kSplit> layout;
  int64_t owner0;
  int n_chunks, n_panels, tile_begin, tile_end;
  int panel, tile, job, tile_seq, issued = 0;

  __device__ int jobs_in_tile(int pnl) const {
    return kGrad ? n_chunks + min(kPanelChunks, n_chunks - pnl * kPanelChunks) : n_chunks;
  }

  // 64 rows x 128 bytes from row0 of a [rows][dim_pad] matrix at column chunk ch into smem (row stride).
  __device__ void copy_rows(unsigned char* dst, int64_t dst_stride, const uint16_t* src, int64_t row0, int ch) const {
    for (int i = threadIdx.x; i < 64 * 8; i += kThreads) {
      const int r = i / 8, piece = i % 8;
      cp_async_16(dst + r * dst_stride + piece * 16, src + (row0 + r) * p.dim_pad + ch * kChunk + piece * 8);
    }
  }

  __device__ void load_next() {
    if (panel < n_panels) {
      unsigned char* stage = stages + (issued % kStages) * layout.stage_bytes;
      const int ch = job < n_chunks ? job : panel * kPanelChunks + (job - n_chunks);
      const int64_t row0 = static_cast<int64_t>(tile) * kTileRows;
      for (int part = 0; part < kParts; ++part) copy_rows(stage + part * kTileBytes, kChunkRowBytes, p.stream[part], row0, ch);
      if (!p.owner_resident && job < n_chunks)
        for (int part = 0; part < kParts; ++part)
          copy_rows(stage + (kParts + part) * kTileBytes, kChunkRowBytes, p.owner[part], owner0, ch);
      if (job == 0) {
        unsigned char* m = meta + (tile_seq % kStages) * layout.meta_bytes;
        const int i = threadIdx.x;  // 32 copies of labels, 256 of stats, 16 of inv: at most four per thread
        if (i < 32) cp_async_16(m + i * 16, p.stream_labels + row0 + i * 2);
        if (kGrad && !p.stats_on_owner)  // RowStats: four 16-byte pieces per row
          for (int piece = i; piece < kTileRows * 4; piece += kThreads)
            cp_async_16(m + kMetaStats + piece * 16,
                        reinterpret_cast<const unsigned char*>(p.stream_stats + row0) + piece * 16);
        if (i < 16) cp_async_16(m + kMetaInv + i * 16, p.stream_inv + row0 + i * 4);
      }
      if (++job == jobs_in_tile(panel)) {
        job = 0;
        ++tile_seq;
        if (++tile == tile_end) {
          tile = tile_begin;
          ++panel;
        }
      }
      ++issued;
    }
    cp_async_commit();  // an empty group past the end keeps the wait counts uniform
  }
};

template <typename Mma, bool kSplit, bool kGrad>
__global__ void __launch_bounds__(kThreads, 1) contrastive_tile_kernel(const __grid_constant__ TileParams p) {
  constexpr int kParts = kSplit ? 2 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout<kSplit> layout(p.dim_pad, p.owner_resident, kGrad && !p.stats_on_owner);
  unsigned char* resident = smem;
  unsigned char* stages = smem + layout.resident_bytes;
  unsigned char* meta = stages + kStages * layout.stage_bytes;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t owner0 = static_cast<int64_t>(blockIdx.x) * kOwnerRows;
  const int n_tiles = static_cast<int>(ceil_div(p.n_stream, kTileRows));
  const int tile_begin = blockIdx.y * p.tiles_per_split;
  const int tile_end = min(n_tiles, tile_begin + p.tiles_per_split);
  const int n_chunks = static_cast<int>(p.dim_pad / kChunk);
  const int n_panels = kGrad ? static_cast<int>(ceil_div(n_chunks, kPanelChunks)) : 1;

  // ---- prologue: resident owner rows, then the first kStages - 1 jobs --------------------------------
  if (p.owner_resident) {
    const int pieces = static_cast<int>(p.dim_pad / 8);  // 16-byte pieces per row
    for (int part = 0; part < kParts; ++part)
      for (int i = threadIdx.x; i < kOwnerRows * pieces; i += kThreads) {
        const int r = i / pieces, piece = i % pieces;
        cp_async_16(resident + (part * kOwnerRows + r) * layout.owner_row_bytes + piece * 16,
                    p.owner[part] + (owner0 + r) * p.dim_pad + piece * 8);
      }
  }
  Producer<kSplit, kGrad> producer{p, stages, meta, layout, owner0, n_chunks, n_panels, tile_begin, tile_end,
                                   0, tile_begin, 0, 0};
  for (int s = 0; s < kStages - 1; ++s) producer.load_next();
  int consumed = 0;
  auto acquire = [&]() -> const unsigned char* {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    producer.load_next();
    return stages + (consumed++ % kStages) * layout.stage_bytes;
  };

  // ---- per-row state: this lane's two owner rows (g and g + 8 of the warp's 16) ----------------------
  // 1/t, or NaN for a temperature out of range: every result is then NaN, as on every backend
  const float t = *p.temperature;
  const float inv_t = t >= static_cast<float>(kMinTemperature) && t < INFINITY ? 1.0f / t : NAN;
  const float inv_weight_max = kGrad && !p.stats_on_owner && *p.weight_max > 0.0f ? 1.0f / *p.weight_max : 0.0f;
  int64_t row[2], label[2];
  float row_scale[2], row_max[2], positive_gap[2], gs[2];
  double sum_exp[2];
  int positives[2];
  RowStats rs[2];
  // HCL's forward state (HardPartial, per lane; the references and has_ref are quad-uniform)
  float hard_ref[2][kHardSets];
  double hard_sum[2][kHardSets], positive_sum[2];
  int negatives[2];
  unsigned has_ref[2];
  const float hard_scale[2] = {p.hard_scale[0], p.hard_scale[1]};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row[h] = owner0 + warp * 16 + g + 8 * h;
    label[h] = p.owner_labels[row[h]];
    row_scale[h] = inv_t * p.owner_inv[row[h]];
    row_max[h] = -INFINITY;
    sum_exp[h] = 0.0;
    positive_gap[h] = gs[h] = 0.0f;
    positives[h] = negatives[h] = 0;
    has_ref[h] = 0u;
    positive_sum[h] = 0.0;
#pragma unroll
    for (int k = 0; k < kHardSets; ++k) {
      hard_ref[h][k] = 0.0f;
      hard_sum[h][k] = 0.0;
    }
    if ((kGrad && p.stats_on_owner && !p.hard) || (!kGrad && p.positive_pass)) rs[h] = p.owner_stats[row[h]];
    if (kGrad && p.stats_on_owner && p.hard) {  // the HCL fields are read per tile (registers are scarce here)
      rs[h].max = p.owner_stats[row[h]].max;
      rs[h].weight = p.owner_stats[row[h]].weight;
    }
  }

  float grad_acc[kGrad ? kPanelChunks : 1][8][4];
  int tile_seq = 0;
  for (int panel = 0; panel < n_panels; ++panel) {
    if constexpr (kGrad) {
#pragma unroll
      for (int c = 0; c < kPanelChunks; ++c)
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) grad_acc[c][n][e] = 0.0f;
    }
    for (int tile = tile_begin; tile < tile_end; ++tile, ++tile_seq) {
      // ---- S = U_owner V_tile^T over all of D ----------------------------------------------------
      float s[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
      for (int ch = 0; ch < n_chunks; ++ch) {
        const unsigned char* stage = acquire();
        // the owner rows' chunk: in the resident copy, or in this stage after the streamed chunk
        const int64_t a_stride = p.owner_resident ? layout.owner_row_bytes : kChunkRowBytes;
        const unsigned char* a_base[kParts];
#pragma unroll
        for (int part = 0; part < kParts; ++part)
          a_base[part] = p.owner_resident
                             ? resident + part * kOwnerRows * layout.owner_row_bytes + ch * kChunk * 2
                             : stage + (kParts + part) * kTileBytes;
#pragma unroll
        for (int kk = 0; kk < kChunk / 16; ++kk) {
          uint32_t a[kParts][4];
#pragma unroll
          for (int part = 0; part < kParts; ++part)
            ldmatrix_x4(a[part], a_base[part] + (warp * 16 + lane % 16) * a_stride + kk * 32 + (lane / 16) * 16);
#pragma unroll
          for (int np = 0; np < 4; ++np) {
            uint32_t b[kParts][4];
            const int b_row = np * 16 + lane % 8 + (lane / 16) * 8;
#pragma unroll
            for (int part = 0; part < kParts; ++part)
              ldmatrix_x4(b[part], stage + part * kTileBytes + b_row * kChunkRowBytes + kk * 32 + ((lane / 8) % 2) * 16);
#pragma unroll
            for (int half = 0; half < 2; ++half) {
              Mma::mma(s[2 * np + half], a[0], b[0][2 * half], b[0][2 * half + 1]);
              if constexpr (kSplit) {
                Mma::mma(s[2 * np + half], a[0], b[1][2 * half], b[1][2 * half + 1]);
                Mma::mma(s[2 * np + half], a[1], b[0][2 * half], b[0][2 * half + 1]);
              }
            }
          }
        }
      }

      // ---- per-tile epilogue: masks, then statistics (forward) or G (backward) -----------------------
      const unsigned char* m = meta + (tile_seq % kStages) * layout.meta_bytes;
      const int64_t* tile_labels = reinterpret_cast<const int64_t*>(m);
      const RowStats* tile_stats = reinterpret_cast<const RowStats*>(m + kMetaStats);
      const float* tile_inv = reinterpret_cast<const float*>(m + kMetaInv);
      const int64_t col0 = static_cast<int64_t>(tile) * kTileRows;
      // The pair (owner row h of this lane, tile column c): valid (in range, not self), positive, and in the
      // log-sum-exp's denominator (every valid pair for the plain op, the negatives for the variants).
      struct Pair {
        bool valid, positive, in_denominator;
      };
      auto pair = [&](int h, int c) {
        const int64_t col = col0 + c;
        const bool valid = col < p.n_stream && !(p.exclude_self && col == row[h]);
        const bool positive = valid && tile_labels[c] == label[h] && label[h] >= 0;
        return Pair{valid, positive, valid && !(p.denominator != kAll && positive)};
      };
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = n * 8 + 2 * t4 + e;
            const auto [valid, positive, in_denominator] = pair(h, c);
            const float logit = s[n][2 * h + e] * row_scale[h] * tile_inv[c];
            if constexpr (!kGrad) {  // the logit of every valid pair (the positives' gap needs the variants' too)
              s[n][2 * h + e] = valid ? logit : -INFINITY;
              tile_max = fmaxf(tile_max, in_denominator ? logit : -INFINITY);
            } else if (p.stats_on_owner) {  // G'_ij without w_i (applied to the accumulated row), times inv_j
              const bool live = valid && rs[h].weight != 0.0f;
              const float shifted = logit - rs[h].max;
              float grad = 0.0f;
              if (live && p.hard)
                grad = hard_element_gradient(logit, in_denominator, positive, p.owner_stats[row[h]], hard_scale);
              else if (live)
                grad = element_gradient(shifted - rs[h].log_sum, in_denominator, positive, rs[h]);
              if (panel == 0 && live) gs[h] += grad * shifted;
              s[n][2 * h + e] = grad * tile_inv[c];
            } else {  // owner = candidate j, column = anchor i: G_ij w_i / max|w|, times inv_i
              const RowStats& st = tile_stats[c];
              s[n][2 * h + e] =
                  !(valid && st.weight != 0.0f) ? 0.0f
                  : st.weight * inv_weight_max * tile_inv[c] *
                        (p.hard ? hard_element_gradient(logit, in_denominator, positive, st, hard_scale)
                                : element_gradient(logit - st.max - st.log_sum, in_denominator, positive, st));
            }
          }
        if constexpr (!kGrad) {
          if (p.hard) {
            // HCL (denominator = kNegatives: in_denominator is j in Neg(i)). The tile's extremes of each set,
            // quad-uniform (fmaxf skips NaN; a NaN logit then makes its set's sum NaN).
            float negative_max = -INFINITY, negative_min = INFINITY, positive_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < 8; ++n)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const auto [valid, positive, negative] = pair(h, n * 8 + 2 * t4 + e);
                const float x = s[n][2 * h + e];
                negative_max = fmaxf(negative_max, negative ? x : -INFINITY);
                negative_min = fminf(negative_min, negative ? x : INFINITY);
                positive_max = fmaxf(positive_max, positive ? x : -INFINITY);
              }
            negative_max = quad_max(negative_max);
            negative_min = -quad_max(-negative_min);
            positive_max = quad_max(positive_max);
            // r_k: the extreme in the direction of c_k of the old reference and the tile's; S_k moved to it
            const float scale[kHardSets] = {hard_scale[0], hard_scale[1], 1.0f};
            const float tile_ref[kHardSets] = {hard_scale[0] >= 0.0f ? negative_max : negative_min,
                                               hard_scale[1] >= 0.0f ? negative_max : negative_min, positive_max};
#pragma unroll
            for (int k = 0; k < kHardSets; ++k) {
              if (fabsf(tile_ref[k]) == INFINITY) continue;  // no finite logit of the set in this tile
              const bool seen = (has_ref[h] >> k) & 1u;
              const float next = seen ? extreme_along(scale[k], hard_ref[h][k], tile_ref[k]) : tile_ref[k];
              if (seen) hard_sum[h][k] *= static_cast<double>(exp2f(scale[k] * (hard_ref[h][k] - next) * kLog2e));
              hard_ref[h][k] = next;
              has_ref[h] |= 1u << k;
            }
            double sum0 = hard_sum[h][0], sum1 = hard_sum[h][1], sum2 = hard_sum[h][2], psum = positive_sum[h];
            int nneg = negatives[h], npos = positives[h];
#pragma unroll
            for (int n = 0; n < 8; ++n)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const auto [valid, positive, negative] = pair(h, n * 8 + 2 * t4 + e);
                const float x = s[n][2 * h + e];
                sum0 += negative ? static_cast<double>(exp2f(scale[0] * (x - hard_ref[h][0]) * kLog2e)) : 0.0;
                sum1 += negative ? static_cast<double>(exp2f(scale[1] * (x - hard_ref[h][1]) * kLog2e)) : 0.0;
                sum2 += positive ? static_cast<double>(exp2f((x - hard_ref[h][2]) * kLog2e)) : 0.0;
                psum += positive ? static_cast<double>(x) : 0.0;
                nneg += negative ? 1 : 0;
                npos += positive ? 1 : 0;
              }
            hard_sum[h][0] = sum0;
            hard_sum[h][1] = sum1;
            hard_sum[h][2] = sum2;
            positive_sum[h] = psum;
            negatives[h] = nneg;
            positives[h] = npos;
            continue;
          }
          if (p.positive_pass) {
            // "per_positive", m and S final: z_ip = lse_Neg(i) - s_ip = log S_i - (s_ip - m_i) (-inf without
            // negatives: softplus 0, sigmoid 0); softplus(z) = max(z, 0) + log1p(e^{-|z|})
            double softplus = sum_exp[h];
            float sigmoid = positive_gap[h];
            int npos = positives[h];
#pragma unroll
            for (int n = 0; n < 8; ++n)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const bool positive = pair(h, n * 8 + 2 * t4 + e).positive;
                const float z = rs[h].log_sum - (s[n][2 * h + e] - rs[h].max);
                const float ez = exp2f(-fabsf(z) * kLog2e);
                softplus += positive ? static_cast<double>(fmaxf(z, 0.0f) + log1pf(ez)) : 0.0;
                sigmoid += positive ? (z >= 0.0f ? 1.0f / (1.0f + ez) : ez / (1.0f + ez)) : 0.0f;
                npos += positive ? 1 : 0;
              }
            sum_exp[h] = softplus;
            positive_gap[h] = sigmoid;
            positives[h] = npos;
            continue;
          }
          // Online statistics: the max is quad-uniform, sums stay per lane. The earlier tiles' terms move from
          // the previous shift to the new one; NaN logits (NaN features, an invalid temperature) reach the sums.
          const float new_max = fmaxf(row_max[h], quad_max(tile_max));
          const float previous = row_max[h] == -INFINITY ? 0.0f : row_max[h];
          const float shift = new_max == -INFINITY ? 0.0f : new_max;
          double sum = sum_exp[h] * static_cast<double>(exp2f((row_max[h] - shift) * kLog2e));
          float gap = positive_gap[h] + static_cast<float>(positives[h]) * (previous - shift);
          int npos = positives[h];
#pragma unroll
          for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const auto [valid, positive, in_denominator] = pair(h, n * 8 + 2 * t4 + e);
              const float shifted = s[n][2 * h + e] - shift;
              sum += in_denominator ? static_cast<double>(exp2f(shifted * kLog2e)) : 0.0;
              gap += positive ? shifted : 0.0f;
              npos += positive ? 1 : 0;
            }
          sum_exp[h] = sum;
          positive_gap[h] = gap;
          positives[h] = npos;
          row_max[h] = new_max;
        }
      }

      // ---- backward: grad_panel += G V_tile[:, panel columns] ----------------------------------------
      if constexpr (kGrad) {
        // G as A fragments, straight from the accumulator layout: k-step kk covers columns 16kk..16kk+15.
        uint32_t ga[kParts][4][4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const float* src = s[2 * kk + r / 2] + 2 * (r % 2);  // r: (row g | g+8) x (cols +0 | +8)
            ga[0][kk][r] = Mma::pack(src[0], src[1]);
            if constexpr (kSplit)
              ga[1][kk][r] = Mma::pack(src[0] - Mma::to_float(static_cast<uint16_t>(ga[0][kk][r] & 0xffff)),
                                       src[1] - Mma::to_float(static_cast<uint16_t>(ga[0][kk][r] >> 16)));
          }
#pragma unroll
        for (int c = 0; c < kPanelChunks; ++c) {
          if (panel * kPanelChunks + c >= n_chunks) break;  // uniform over the CTA
          const unsigned char* stage = acquire();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int np = 0; np < 4; ++np) {
              uint32_t b[kParts][4];
              const int k_row = kk * 16 + lane % 8 + ((lane / 8) % 2) * 8;
              const int n_col = np * 16 + (lane / 16) * 8;
#pragma unroll
              for (int part = 0; part < kParts; ++part)
                ldmatrix_x4_trans(b[part], stage + part * kTileBytes + k_row * kChunkRowBytes + n_col * 2);
#pragma unroll
              for (int half = 0; half < 2; ++half) {
                float(&acc)[4] = grad_acc[c][2 * np + half];
                Mma::mma(acc, ga[0][kk], b[0][2 * half], b[0][2 * half + 1]);
                if constexpr (kSplit) {
                  Mma::mma(acc, ga[0][kk], b[1][2 * half], b[1][2 * half + 1]);
                  Mma::mma(acc, ga[1][kk], b[0][2 * half], b[0][2 * half + 1]);
                }
              }
            }
        }
      }
    }

    // ---- backward: write this panel of dL/d(normalized owner rows) for this split -------------------
    if constexpr (kGrad) {
      const float col_scale = p.stats_on_owner ? inv_t : *p.weight_max * inv_t;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float scale = p.stats_on_owner ? rs[h].weight * col_scale : col_scale;
        float* out = p.grad + (static_cast<int64_t>(blockIdx.y) * gridDim.x * kOwnerRows + row[h]) * p.dim_pad;
#pragma unroll
        for (int c = 0; c < kPanelChunks; ++c) {
          const int64_t col_base = static_cast<int64_t>(panel * kPanelChunks + c) * kChunk;
          if (col_base >= p.dim_pad) break;
#pragma unroll
          for (int n = 0; n < 8; ++n)
            *reinterpret_cast<float2*>(out + col_base + n * 8 + 2 * t4) =
                make_float2(grad_acc[c][n][2 * h] * scale, grad_acc[c][n][2 * h + 1] * scale);
        }
      }
    }
  }
  cp_async_wait<0>();

  // ---- per-row results of this split --------------------------------------------------------------
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t out = static_cast<int64_t>(blockIdx.y) * gridDim.x * kOwnerRows + row[h];
    if constexpr (!kGrad) {
      if (p.hard) {
        HardPartial q;
#pragma unroll
        for (int k = 0; k < kHardSets; ++k) {
          q.sum[k] = quad_sum(hard_sum[h][k]);
          q.ref[k] = hard_ref[h][k];
        }
        q.positive_sum = quad_sum(positive_sum[h]);
        q.negatives = quad_sum(negatives[h]);
        q.positives = quad_sum(positives[h]);
        q.has_ref = has_ref[h];
        if (t4 == 0) p.hard_partial[out] = q;
        continue;
      }
      const double sum = quad_sum(sum_exp[h]);
      const float gap = quad_sum(positive_gap[h]);
      const int npos = quad_sum(positives[h]);
      if (t4 == 0) p.partial[out] = RowPartial{sum, row_max[h], gap, npos, 0};
    } else if (p.stats_on_owner) {
      const float total = quad_sum(gs[h]);
      if (t4 == 0) p.row_gs[out] = rs[h].weight * total;
    }
  }
}

// ============================================================================================
// Merging the splits, the backward's row statistics, and the input gradients.
// ============================================================================================
// Writes m, log S, |P| and L_i per row (the variants also mean_p s_ip; "per_positive" leaves in row_loss only
// its weight term, finish_positive_kernel adds the softplus mean):
//   plain          L_i = log S_i - gap_i / |P|                                     (m, S over every candidate)
//   "negatives"    L_i = log S_i - gap_i / |P| + (1 - w'_i) mean_p s_ip = lse_Neg - w'_i mean_p s_ip
//   "per_positive" L_i = mean_p softplus(lse_Neg - s_ip) + (1 - w'_i) mean_p s_ip
// with mean_p s_ip = m_i + gap_i / |P| (m_i read as 0 for the variants' rows without negatives, as on the cpu).
__global__ void finish_forward_kernel(const RowPartial* __restrict__ partial, int splits, int64_t n_rows,
                                      int64_t rows_pad, int denominator, const float* __restrict__ positive_weight,
                                      float* __restrict__ row_max, float* __restrict__ log_sum,
                                      int* __restrict__ n_positive, float* __restrict__ row_loss,
                                      float* __restrict__ positive_mean) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rows) return;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, partial[s * rows_pad + i].max);
  const float shift = m == -INFINITY ? 0.0f : m;
  double sum = 0.0;
  float gap = 0.0f;
  int positives = 0;
  for (int s = 0; s < splits; ++s) {  // each split's sum and gap moved from its own shift to the row's
    const RowPartial q = partial[s * rows_pad + i];
    sum += q.sum_exp * static_cast<double>(exp2f((q.max - shift) * kLog2e));
    gap += q.positive_gap + static_cast<float>(q.positives) * ((q.max == -INFINITY ? 0.0f : q.max) - shift);
    positives += q.positives;
  }
  // A row whose denominator is empty (R = K = 1 with exclude_self) gets m = log S = -inf and no positive.
  const float row_log_sum = static_cast<float>(log(sum));
  const float count = static_cast<float>(max(positives, 1));
  log_sum[i] = row_log_sum;
  n_positive[i] = positives;
  if (denominator == kAll) {
    row_max[i] = m;
    row_loss[i] = positives > 0 ? row_log_sum - gap / count : 0.0f;
    return;
  }
  const float mean_s = positives > 0 ? shift + gap / count : 0.0f;
  const float wp = positive_weight[i];
  const float weight_term = wp == 1.0f ? 0.0f : (1.0f - wp) * mean_s;  // w' = 1: a loss of its own size
  row_max[i] = shift;
  positive_mean[i] = mean_s;
  row_loss[i] = positives > 0 ? (denominator == kNegatives ? row_log_sum - gap / count : 0.0f) + weight_term : 0.0f;
}

// "per_positive": sums the positives' pass over the splits; L_i += sum_p softplus(z_ip) / |P|,
// c_i = sum_p sigmoid(z_ip) / max(|P|, 1).
__global__ void finish_positive_kernel(const RowPartial* __restrict__ partial, int splits, int64_t n_rows,
                                       int64_t rows_pad, float* __restrict__ row_loss, float* __restrict__ coef) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rows) return;
  double softplus = 0.0, sigmoid = 0.0;
  int positives = 0;
  for (int s = 0; s < splits; ++s) {
    const RowPartial q = partial[s * rows_pad + i];
    softplus += q.sum_exp;
    sigmoid += static_cast<double>(q.positive_gap);
    positives += q.positives;
  }
  const double count = static_cast<double>(max(positives, 1));
  coef[i] = static_cast<float>(sigmoid / count);
  if (positives > 0) row_loss[i] += static_cast<float>(softplus / count);
}

// HCL: merges the splits' HardPartial (each S_k moved from its split's reference to the row's) into the
// hard_negative_stats op's outputs, as the CPU kernel forms them: per set k, ref = r_k (0 for an empty set),
// log_sum = log S_k (-inf for an empty set), lse = c_k r_k + log S_k (-inf for an empty set); mean_p s_ip (0
// without positives), |Neg|, |P|. A temperature out of range gives NaN statistics (as on the cpu).
__global__ void finish_hard_kernel(const HardPartial* __restrict__ partial, int splits, int64_t n_rows,
                                   int64_t rows_pad, float c0, float c1, const float* __restrict__ temperature,
                                   float* __restrict__ lse, float* __restrict__ positive_mean,
                                   int* __restrict__ n_negative, int* __restrict__ n_positive,
                                   float* __restrict__ reference, float* __restrict__ log_sum) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_rows) return;
  const float scale[kHardSets] = {c0, c1, 1.0f};
  float ref[kHardSets] = {0.0f, 0.0f, 0.0f};
  unsigned seen = 0u;
  int negatives = 0, positives = 0;
  double positive_sum = 0.0;
  for (int s = 0; s < splits; ++s) {
    const HardPartial& q = partial[s * rows_pad + i];
    for (int k = 0; k < kHardSets; ++k)
      if ((q.has_ref >> k) & 1u) {
        ref[k] = ((seen >> k) & 1u) ? extreme_along(scale[k], ref[k], q.ref[k]) : q.ref[k];
        seen |= 1u << k;
      }
    negatives += q.negatives;
    positives += q.positives;
    positive_sum += q.positive_sum;
  }
  double sum[kHardSets] = {0.0, 0.0, 0.0};
  for (int s = 0; s < splits; ++s) {  // a split without a reference for k has S_k = 0 (or NaN: kept)
    const HardPartial& q = partial[s * rows_pad + i];
    for (int k = 0; k < kHardSets; ++k)
      sum[k] += ((q.has_ref >> k) & 1u) ? q.sum[k] * exp(static_cast<double>(scale[k] * (q.ref[k] - ref[k])))
                                        : q.sum[k];
  }
  const float t = *temperature;
  const bool valid_t = t >= static_cast<float>(kMinTemperature) && t < INFINITY;
  for (int k = 0; k < kHardSets; ++k) {
    const bool empty = (k == 2 ? positives : negatives) == 0;
    const float r = empty ? 0.0f : ref[k], l = static_cast<float>(log(sum[k]));
    reference[i * kHardSets + k] = valid_t ? r : NAN;
    log_sum[i * kHardSets + k] = valid_t ? l : NAN;
    lse[i * kHardSets + k] = !valid_t ? NAN : empty ? -INFINITY : scale[k] * r + l;
  }
  positive_mean[i] = !valid_t ? NAN : positives > 0 ? static_cast<float>(positive_sum / positives) : 0.0f;
  n_negative[i] = negatives;
  n_positive[i] = positives;
}

// HCL's RowStats for the backward (hard_element_gradient), from the upstream g_k = dLoss/dX_k (grad_lse (R, 3))
// and h = dLoss/dY (grad_mean): a_0 = g_0 c_0, a_1 = g_1 c_1 (0 without negatives), a_2 = g_2, a_3 = h / |P| (0
// without positives); log S_k 0 for an empty set. |G_ij| <= w_i = sum_k |a_k| (each softmax term is at most 1):
// the coefficients are stored divided by w_i and weight = w_i, so G' = G / w_i is in [-1, 1] for the 16-bit
// products (the upstream's scale, ~1/R for a mean, stays out of fp16's subnormals) and w_i applies to the
// accumulated rows as for the other ops; bound = w_i (the dV product's scale). rho_term = rho_i sum_j G_ij =
// rho_i (a_0 + a_1 + a_2 + h), the part of sum_ij G_ij s_ij the tiles' sum_ij w_i G'_ij (s_ij - rho_i) leaves
// out (rho_i = r_0, or r_2 without negatives).
__global__ void hard_row_stats_kernel(const float* __restrict__ grad_lse, const float* __restrict__ grad_mean,
                                      const float* __restrict__ reference, const float* __restrict__ log_sum,
                                      const int* __restrict__ n_negative, const int* __restrict__ n_positive,
                                      float c0, float c1, int64_t n_rows, int64_t rows_pad,
                                      RowStats* __restrict__ stats, float* __restrict__ bound,
                                      double* __restrict__ rho_term) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows_pad) return;
  RowStats st{};
  if (i < n_rows) {
    const bool has_negative = n_negative[i] > 0, has_positive = n_positive[i] > 0;
    const bool present[kHardSets] = {has_negative, has_negative, has_positive};
    for (int k = 0; k < kHardSets; ++k) {
      st.hard_ref[k] = reference[i * kHardSets + k];
      st.hard_log_sum[k] = present[k] ? log_sum[i * kHardSets + k] : 0.0f;
    }
    const float a[kHardSets + 1] = {has_negative ? grad_lse[i * kHardSets] * c0 : 0.0f,
                                    has_negative ? grad_lse[i * kHardSets + 1] * c1 : 0.0f,
                                    has_positive ? grad_lse[i * kHardSets + 2] : 0.0f,
                                    has_positive ? grad_mean[i] / static_cast<float>(n_positive[i]) : 0.0f};
    const float w = fabsf(a[0]) + fabsf(a[1]) + fabsf(a[2]) + fabsf(a[3]);
    for (int k = 0; k <= kHardSets; ++k) st.hard_coef[k] = w > 0.0f ? a[k] / w : 0.0f;
    st.max = has_negative ? st.hard_ref[0] : st.hard_ref[2];
    st.weight = w;  // 0: the row has no gradient (no nonempty set, or a zero upstream)
    const double row_sum =
        static_cast<double>(a[0]) + a[1] + a[2] + (has_positive ? static_cast<double>(grad_mean[i]) : 0.0);
    bound[i] = w;
    rho_term[i] = w > 0.0f ? static_cast<double>(st.max) * row_sum : 0.0;
  }
  stats[i] = st;
}

// RowStats (above) of rows_pad rows. weight: dLoss/dL_i, or nullptr for 1 (the positives' pass); coef and
// positive_weight: the variants' c_i and w'_i (read for "per_positive" / the variants only).
__global__ void row_stats_kernel(const float* __restrict__ row_max, const float* __restrict__ log_sum,
                                 const int* __restrict__ n_positive, const float* __restrict__ weight,
                                 const float* __restrict__ coef, const float* __restrict__ positive_weight,
                                 int denominator, int64_t n_rows, int64_t rows_pad, RowStats* __restrict__ stats) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows_pad) return;
  RowStats st{};
  if (i < n_rows && n_positive[i] > 0) {
    const float inv_positives = 1.0f / static_cast<float>(n_positive[i]);
    st.max = row_max[i];
    st.log_sum = log_sum[i];
    st.coef = denominator == kPerPositive ? coef[i] : 1.0f;
    st.sigmoid_scale = denominator == kPerPositive ? inv_positives : 0.0f;
    st.positive_term = (denominator == kAll ? 1.0f : positive_weight[i]) * inv_positives;
    st.weight = weight != nullptr ? weight[i] : 1.0f;
  }
  stats[i] = st;
}

// dx = (du - u (u . du)) / ||x|| with du the sum of the split partials (and of the other role's partials
// when the candidates are the anchors); one warp per row; 0 for rows no longer than eps.
template <typename T>
__global__ void input_grad_kernel(const T* __restrict__ x, const double* __restrict__ norms, int64_t n_rows,
                                  int64_t dim, int64_t dim_pad, double eps, const float* __restrict__ partial,
                                  int splits, int64_t rows_pad, const float* __restrict__ other_partial,
                                  int other_splits, int64_t other_rows_pad, T* __restrict__ dx) {
  const int lane = threadIdx.x % 32;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (row >= n_rows) return;
  const T* xr = x + row * dim;
  const double norm = norms[row];
  const float inv_norm = static_cast<float>(1.0 / norm);
  auto du = [&](int64_t d) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[(s * rows_pad + row) * dim_pad + d];
    for (int s = 0; s < other_splits; ++s) v += other_partial[(s * other_rows_pad + row) * dim_pad + d];
    return v;
  };
  float radial = 0.0f;
  for (int64_t d = lane; d < dim; d += 32) radial += to_float(xr[d]) * inv_norm * du(d);
  radial = warp_sum(radial);
  const bool live = norm > eps;
  for (int64_t d = lane; d < dim; d += 32) {
    const float u = to_float(xr[d]) * inv_norm;
    dx[row * dim + d] = from_float<T>(live ? (du(d) - u * radial) * inv_norm : 0.0f);
  }
}

// ============================================================================================
// Launchers
// ============================================================================================
constexpr int64_t kRowPad = 64;

// The 16-bit copies of one input, with what the kernels need to know about it.
struct PreparedRows {
  at::Tensor hi, lo, norms, inv;
  int64_t n_rows, rows_pad;
};

template <typename T, typename Mma, bool kSplit>
PreparedRows prepare_rows(const at::Tensor& x, int64_t dim_pad, double eps, cudaStream_t stream) {
  const int64_t n_rows = x.size(0), dim = x.size(1), rows_pad = ceil_div(n_rows, kRowPad) * kRowPad;
  auto opts16 = x.options().dtype(at::kShort);
  PreparedRows out{at::empty({rows_pad, dim_pad}, opts16),
                   kSplit ? at::empty({rows_pad, dim_pad}, opts16) : at::Tensor(),
                   at::empty({n_rows}, x.options().dtype(at::kDouble)),
                   at::empty({rows_pad}, x.options().dtype(at::kFloat)), n_rows, rows_pad};
  const int threads = 256;
  prepare_rows_kernel<T, Mma, kSplit><<<ceil_div(rows_pad * 32, threads), threads, 0, stream>>>(
      x.data_ptr<T>(), n_rows, dim, rows_pad, dim_pad, eps, reinterpret_cast<uint16_t*>(out.hi.data_ptr<int16_t>()),
      kSplit ? reinterpret_cast<uint16_t*>(out.lo.data_ptr<int16_t>()) : nullptr, out.norms.data_ptr<double>(),
      out.inv.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor padded_labels(const at::Tensor& labels, int64_t rows_pad) {
  return at::constant_pad_nd(labels.contiguous(), {0, rows_pad - labels.size(0)}, -1);
}

// Grid of one tile-kernel launch: owner blocks x splits of the streamed tiles (splits only when the owner
// rows alone would leave most multiprocessors idle).
struct Grid {
  int64_t blocks;
  int splits, tiles_per_split;
};

Grid make_grid(int64_t n_owner, int64_t n_stream) {
  const int64_t blocks = ceil_div(n_owner, kOwnerRows), tiles = ceil_div(n_stream, kTileRows);
  const int64_t target = kSplitTargetCtasPerSm * device_attribute(cudaDevAttrMultiProcessorCount);
  const int64_t splits = std::clamp<int64_t>(ceil_div(target, blocks), 1, tiles);
  const int64_t per_split = ceil_div(tiles, splits);
  return {blocks, static_cast<int>(ceil_div(tiles, per_split)), static_cast<int>(per_split)};
}

template <typename Mma, bool kSplit, bool kGrad>
void launch_tile_kernel(TileParams p, const Grid& grid, cudaStream_t stream) {
  const int64_t smem_limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  const bool stream_stats = kGrad && !p.stats_on_owner;
  p.owner_resident = SmemLayout<kSplit>(p.dim_pad, true, stream_stats).total <= smem_limit;
  const int64_t smem = SmemLayout<kSplit>(p.dim_pad, p.owner_resident, stream_stats).total;
  TORCH_CHECK(smem <= smem_limit, "contrastive CUDA kernel needs ", smem, " bytes of shared memory, the device has ",
              smem_limit);
  p.tiles_per_split = grid.tiles_per_split;
  auto kernel = contrastive_tile_kernel<Mma, kSplit, kGrad>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<dim3(static_cast<unsigned>(grid.blocks), grid.splits), kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TileParams tile_params(const PreparedRows& owner, const at::Tensor& owner_labels, const PreparedRows& streamed,
                       const at::Tensor& stream_labels, const at::Tensor& temperature, bool exclude_self) {
  TileParams p{};
  auto ptr = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const uint16_t*>(t.data_ptr<int16_t>()) : nullptr;
  };
  p.owner[0] = ptr(owner.hi);
  p.owner[1] = ptr(owner.lo);
  p.stream[0] = ptr(streamed.hi);
  p.stream[1] = ptr(streamed.lo);
  p.owner_inv = owner.inv.data_ptr<float>();
  p.stream_inv = streamed.inv.data_ptr<float>();
  p.owner_labels = owner_labels.data_ptr<int64_t>();
  p.stream_labels = stream_labels.data_ptr<int64_t>();
  p.temperature = temperature.data_ptr<float>();
  p.n_owner = owner.n_rows;
  p.n_stream = streamed.n_rows;
  p.dim_pad = owner.hi.size(1);
  p.exclude_self = exclude_self;
  return p;
}

// Everything both ops share: inputs checked and made contiguous, rows normalized.
struct Prepared {
  at::Tensor anchors, candidates, temperature, anchor_labels, candidate_labels;
  PreparedRows u, v;
  bool shared;  // the candidates are the anchors (one tensor)
};

struct Forward {
  at::Tensor row_max, log_sum, n_positive, row_loss;
  at::Tensor coef, positive_mean;  // the variants only: c_i ("per_positive"; 1 otherwise), mean_p s_ip (0 w/o P)
};

// Which variant of the op (bindings.cpp): the denominator code and w'_i ((R,) float32; undefined for the plain op).
struct Variant {
  int denominator = kAll;
  at::Tensor positive_weight;
  const float* weight_ptr() const { return positive_weight.defined() ? positive_weight.data_ptr<float>() : nullptr; }
};

// What the tile kernel computes besides the plain op: a variant's denominator, or HCL's statistics and G.
struct TileMode {
  int denominator = kAll;
  bool hard = false;
  float hard_scale[2] = {0.0f, 0.0f};  // HCL: c_0 = 1 + beta, c_1 = beta
  static TileMode hard_negatives(double beta) {  // Neg(i): the candidates out of the "negatives" denominator
    return TileMode{kNegatives, true, {static_cast<float>(1.0 + beta), static_cast<float>(beta)}};
  }
  void apply(TileParams& p) const {
    p.denominator = denominator;
    p.hard = hard;
    p.hard_scale[0] = hard_scale[0];
    p.hard_scale[1] = hard_scale[1];
  }
};

struct InputGrads {
  at::Tensor anchors, candidates, temperature;
};

// The hard_negative_stats op's outputs (contrastive_cpu.cpp, hard_negative_stats_forward_cpu).
using HardStatsOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename T, typename Mma, bool kSplit>
struct ContrastiveCuda {
  static Prepared prepare(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                          const at::Tensor& candidate_labels, const at::Tensor& temperature, double eps,
                          cudaStream_t stream) {
    Prepared pr;
    pr.shared = candidates.is_same(anchors);
    pr.anchors = anchors.contiguous();
    pr.candidates = pr.shared ? pr.anchors : candidates.contiguous();
    pr.temperature = temperature.reshape({1}).to(at::kFloat);
    const int64_t dim_pad = ceil_div(anchors.size(1), kChunk) * kChunk;
    pr.u = prepare_rows<T, Mma, kSplit>(pr.anchors, dim_pad, eps, stream);
    pr.v = pr.shared ? pr.u : prepare_rows<T, Mma, kSplit>(pr.candidates, dim_pad, eps, stream);
    pr.anchor_labels = padded_labels(anchor_labels, pr.u.rows_pad);
    pr.candidate_labels = padded_labels(candidate_labels, pr.v.rows_pad);
    return pr;
  }

  static Forward forward(const Prepared& pr, bool exclude_self, const Variant& variant, cudaStream_t stream) {
    TileParams p = tile_params(pr.u, pr.anchor_labels, pr.v, pr.candidate_labels, pr.temperature, exclude_self);
    p.denominator = variant.denominator;
    const Grid grid = make_grid(pr.u.n_rows, pr.v.n_rows);
    auto opts = pr.anchors.options().dtype(at::kFloat);
    at::Tensor partial = empty_output({grid.splits * pr.u.rows_pad * kRowPartialFloats}, opts);
    p.partial = reinterpret_cast<RowPartial*>(partial.data_ptr<float>());
    launch_tile_kernel<Mma, kSplit, false>(p, grid, stream);
    const int64_t n = pr.u.n_rows;
    Forward f{empty_output({n}, opts), empty_output({n}, opts), empty_output({n}, opts.dtype(at::kInt)),
              empty_output({n}, opts)};
    if (variant.denominator != kAll) {
      f.coef = variant.denominator == kPerPositive ? empty_output({n}, opts) : at::ones({n}, opts);
      f.positive_mean = empty_output({n}, opts);
    }
    finish_forward_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(
        p.partial, grid.splits, n, pr.u.rows_pad, variant.denominator, variant.weight_ptr(),
        f.row_max.data_ptr<float>(), f.log_sum.data_ptr<float>(), f.n_positive.data_ptr<int>(),
        f.row_loss.data_ptr<float>(), f.positive_mean.defined() ? f.positive_mean.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (variant.denominator == kPerPositive) {  // the positives' pass, with the final m and S of every row
      at::Tensor stats = row_stats(f.row_max, f.log_sum, f.n_positive, nullptr, Variant{}, f.coef, pr.u, stream);
      p.positive_pass = true;
      p.owner_stats = reinterpret_cast<const RowStats*>(stats.data_ptr<float>());
      launch_tile_kernel<Mma, kSplit, false>(p, grid, stream);
      finish_positive_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(
          p.partial, grid.splits, n, pr.u.rows_pad, f.row_loss.data_ptr<float>(), f.coef.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return f;
  }

  // HCL: the hard_negative_stats op's row statistics (finish_hard_kernel states them).
  static HardStatsOutputs hard_forward(const Prepared& pr, bool exclude_self, double beta, cudaStream_t stream) {
    const TileMode mode = TileMode::hard_negatives(beta);
    TileParams p = tile_params(pr.u, pr.anchor_labels, pr.v, pr.candidate_labels, pr.temperature, exclude_self);
    mode.apply(p);
    const Grid grid = make_grid(pr.u.n_rows, pr.v.n_rows);
    auto opts = pr.anchors.options().dtype(at::kFloat);
    at::Tensor partial = empty_output({grid.splits * pr.u.rows_pad * kHardPartialFloats}, opts);
    p.hard_partial = reinterpret_cast<HardPartial*>(partial.data_ptr<float>());
    launch_tile_kernel<Mma, kSplit, false>(p, grid, stream);
    const int64_t n = pr.u.n_rows;
    HardStatsOutputs out{empty_output({n, kHardSets}, opts), empty_output({n}, opts),
                         empty_output({n}, opts.dtype(at::kInt)), empty_output({n}, opts.dtype(at::kInt)),
                         empty_output({n, kHardSets}, opts), empty_output({n, kHardSets}, opts)};
    auto& [lse, positive_mean, n_negative, n_positive, reference, log_sum] = out;
    finish_hard_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(
        p.hard_partial, grid.splits, n, pr.u.rows_pad, mode.hard_scale[0], mode.hard_scale[1],
        pr.temperature.data_ptr<float>(), lse.data_ptr<float>(), positive_mean.data_ptr<float>(),
        n_negative.data_ptr<int>(), n_positive.data_ptr<int>(), reference.data_ptr<float>(),
        log_sum.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }

  // RowStats of the anchors (padded to rows_pad); weight (R,) float or nullptr for 1.
  static at::Tensor row_stats(const at::Tensor& row_max, const at::Tensor& log_sum, const at::Tensor& n_positive,
                              const float* weight, const Variant& variant, const at::Tensor& coef,
                              const PreparedRows& rows, cudaStream_t stream) {
    at::Tensor stats = empty_output({rows.rows_pad * kRowStatsFloats}, row_max.options().dtype(at::kFloat));
    row_stats_kernel<<<ceil_div(rows.rows_pad, 256), 256, 0, stream>>>(
        row_max.data_ptr<float>(), log_sum.data_ptr<float>(), n_positive.data_ptr<int>(), weight,
        variant.denominator == kPerPositive ? coef.data_ptr<float>() : nullptr, variant.weight_ptr(),
        variant.denominator, rows.n_rows, rows.rows_pad, reinterpret_cast<RowStats*>(stats.data_ptr<float>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return stats;
  }

  // weight (R,) float: dLoss/dL_i; rows without a positive are ignored whatever their weight. coef: the
  // variants' c_i (read for "per_positive").
  static InputGrads backward(const Prepared& pr, const at::Tensor& weight, const at::Tensor& row_max,
                             const at::Tensor& log_sum, const at::Tensor& n_positive, const Variant& variant,
                             const at::Tensor& coef, bool exclude_self, double eps, const at::Tensor& temperature,
                             const GradMask& mask, cudaStream_t stream) {
    auto opts = pr.anchors.options().dtype(at::kFloat);
    const at::Tensor zero = at::zeros({}, opts);
    at::Tensor live_weight = at::where(n_positive > 0, weight, zero);
    // |G_ij| <= 1 for the plain op, <= 2 + |w'_i| for the variants (coef e^x <= 1, sigmoid_scale <= 1,
    // |positive_term| <= |w'_i|): the dV product's G is divided by the largest bound so it stays in [-1, 1]
    at::Tensor bound = live_weight.abs();
    if (variant.denominator != kAll) bound = bound * (variant.positive_weight.abs() + 2.0f);
    at::Tensor weight_max = bound.amax().reshape({1});
    at::Tensor stats = row_stats(row_max, log_sum, n_positive, live_weight.data_ptr<float>(), variant, coef, pr.u,
                                 stream);
    // sum_ij G_ij s_ij = sum_ij G_ij (s_ij - m_i) (the tiles) + sum_i m_i sum_j G_ij; sum_j G_ij is 0 for the plain
    // op and w_i (1 - w'_i) for the variants (with negatives; without them m_i is 0)
    at::Tensor rest = variant.denominator == kAll
                          ? at::Tensor()
                          : at::where(n_positive > 0, live_weight * row_max * (1.0f - variant.positive_weight), zero)
                                .to(at::kDouble)
                                .sum();
    return backward_passes(pr, stats, weight_max, TileMode{variant.denominator}, rest, exclude_self, eps,
                           temperature, mask, stream);
  }

  // HCL: the gradient of the hard_negative_stats op for upstream grad_lse (R, 3) and grad_mean (R,) (float).
  static InputGrads hard_backward(const Prepared& pr, const at::Tensor& grad_lse, const at::Tensor& grad_mean,
                                  const at::Tensor& n_negative, const at::Tensor& n_positive,
                                  const at::Tensor& reference, const at::Tensor& log_sum, double beta,
                                  bool exclude_self, double eps, const at::Tensor& temperature, const GradMask& mask,
                                  cudaStream_t stream) {
    const TileMode mode = TileMode::hard_negatives(beta);
    auto opts = pr.anchors.options().dtype(at::kFloat);
    const int64_t n = pr.u.n_rows;
    at::Tensor stats = empty_output({pr.u.rows_pad * kRowStatsFloats}, opts);
    at::Tensor bound = empty_output({n}, opts), rho_term = empty_output({n}, opts.dtype(at::kDouble));
    hard_row_stats_kernel<<<ceil_div(pr.u.rows_pad, 256), 256, 0, stream>>>(
        grad_lse.data_ptr<float>(), grad_mean.data_ptr<float>(), reference.data_ptr<float>(),
        log_sum.data_ptr<float>(), n_negative.data_ptr<int>(), n_positive.data_ptr<int>(), mode.hard_scale[0],
        mode.hard_scale[1], n, pr.u.rows_pad, reinterpret_cast<RowStats*>(stats.data_ptr<float>()),
        bound.data_ptr<float>(), rho_term.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return backward_passes(pr, stats, bound.amax().reshape({1}), mode, rho_term.sum(), exclude_self, eps,
                           temperature, mask, stream);
  }

  // The two recompute passes and the input gradients, from the anchors' RowStats (padded to rows_pad):
  // weight_max (1,) bounds |w_i G'_ij| (the dV product's scale); rest (float64 scalar; undefined: 0) is what the
  // tiles' sum_ij G_ij (s_ij - RowStats::max_i) leaves out of sum_ij G_ij s_ij (for dL/dt).
  // mask: which gradients to form; a pass none of them needs is not launched, and an output that is off is an
  // empty (0,) tensor. The row pass also gives the temperature's partials, so it runs for a learnable temperature
  // even when the anchors are frozen (its dU product then goes unused: the kernel bodies are not changed before
  // they have run on a GPU, issue 25).
  static InputGrads backward_passes(const Prepared& pr, const at::Tensor& stats, const at::Tensor& weight_max,
                                    const TileMode& mode, const at::Tensor& rest, bool exclude_self, double eps,
                                    const at::Tensor& temperature, const GradMask& mask, cudaStream_t stream) {
    auto opts = pr.anchors.options().dtype(at::kFloat);
    const int64_t rows_pad = pr.u.rows_pad, dim_pad = pr.u.hi.size(1);
    auto* stats_ptr = reinterpret_cast<const RowStats*>(stats.data_ptr<float>());
    // One rounding of the summed gradient when the candidates are the anchors (as the CPU kernel does for
    // inputs narrower than the accumulation); the candidates' part is then zero and autograd adds it.
    const bool sum_roles = pr.shared && pr.anchors.scalar_type() != at::kFloat;
    const bool row_pass = mask.anchors || mask.temperature;
    const bool column_pass = mask.candidates || (sum_roles && mask.anchors);

    // dL/du: owner = anchors, streamed = candidates (row-parallel), with the temperature partials.
    TileParams pa = tile_params(pr.u, pr.anchor_labels, pr.v, pr.candidate_labels, pr.temperature, exclude_self);
    const Grid grid_a = make_grid(pr.u.n_rows, pr.v.n_rows);
    at::Tensor grad_u, row_gs;
    if (row_pass) {
      grad_u = empty_output({grid_a.splits * rows_pad * dim_pad}, opts);
      row_gs = empty_output({grid_a.splits, rows_pad}, opts);
      mode.apply(pa);
      pa.stats_on_owner = true;
      pa.owner_stats = stats_ptr;
      pa.grad = grad_u.data_ptr<float>();
      pa.row_gs = row_gs.data_ptr<float>();
      launch_tile_kernel<Mma, kSplit, true>(pa, grid_a, stream);
    }

    // dL/dv: owner = candidates, streamed = anchors (column-parallel).
    TileParams pc = tile_params(pr.v, pr.candidate_labels, pr.u, pr.anchor_labels, pr.temperature, exclude_self);
    const Grid grid_c = make_grid(pr.v.n_rows, pr.u.n_rows);
    at::Tensor grad_v;
    if (column_pass) {
      grad_v = empty_output({grid_c.splits * pr.v.rows_pad * dim_pad}, opts);
      mode.apply(pc);
      pc.stats_on_owner = false;
      pc.stream_stats = stats_ptr;
      pc.weight_max = weight_max.data_ptr<float>();
      pc.grad = grad_v.data_ptr<float>();
      launch_tile_kernel<Mma, kSplit, true>(pc, grid_c, stream);
    }

    InputGrads out{at::empty({0}, pr.anchors.options()), at::empty({0}, pr.candidates.options()),
                   at::empty({0}, temperature.options())};
    if (mask.anchors) {
      out.anchors = input_grad(pr.anchors, pr.u, eps, grad_u, grid_a.splits, sum_roles ? &grad_v : nullptr,
                               grid_c.splits, pr.v.rows_pad, stream);
    }
    if (mask.candidates) {
      out.candidates = sum_roles ? at::zeros(pr.candidates.sizes(), pr.candidates.options())
                                 : input_grad(pr.candidates, pr.v, eps, grad_v, grid_c.splits, nullptr, 0, 0, stream);
    }
    if (!mask.temperature) return out;
    // dL/dt = -(1/t) sum_ij G_ij s_ij; 1/t NaN for a temperature out of range, as in the kernels.
    at::Tensor gs_sum = row_gs.narrow(1, 0, pr.u.n_rows).to(at::kDouble).sum();
    if (rest.defined()) gs_sum = gs_sum + rest;
    at::Tensor t64 = temperature.reshape({}).to(at::kDouble);
    at::Tensor inv_t = at::where(at::isfinite(t64) & (t64 >= kMinTemperature), t64.reciprocal(),
                                 at::full({}, std::numeric_limits<double>::quiet_NaN(), t64.options()));
    out.temperature = (-gs_sum * inv_t).to(temperature.scalar_type());
    return out;
  }

  static at::Tensor input_grad(const at::Tensor& x, const PreparedRows& rows, double eps, const at::Tensor& partial,
                               int splits, const at::Tensor* other, int other_splits, int64_t other_rows_pad,
                               cudaStream_t stream) {
    at::Tensor dx = empty_output(x.sizes(), x.options());
    const int threads = 256;
    input_grad_kernel<T><<<ceil_div(rows.n_rows * 32, threads), threads, 0, stream>>>(
        x.data_ptr<T>(), rows.norms.data_ptr<double>(), rows.n_rows, x.size(1), rows.hi.size(1), eps,
        partial.data_ptr<float>(), splits, rows.rows_pad, other ? other->data_ptr<float>() : nullptr,
        other ? other_splits : 0, other_rows_pad, dx.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return dx;
  }
};

// Calls fn with the ContrastiveCuda instantiation of the input dtype.
template <typename Fn>
auto dispatch_dtype(at::ScalarType dtype, Fn fn) {
  switch (dtype) {
    case at::kFloat: return fn(ContrastiveCuda<float, Bf16Mma, true>{});
    case at::kBFloat16: return fn(ContrastiveCuda<c10::BFloat16, Bf16Mma, false>{});
    case at::kHalf: return fn(ContrastiveCuda<c10::Half, Fp16Mma, false>{});
    default: TORCH_CHECK(false, "the CUDA kernels take float32, float16 or bfloat16 features, got ", dtype);
  }
}

// ============================================================================================
// Registered ops (same schemas and results as contrastive_cpu.cpp)
// ============================================================================================
// The temperature's value is not checked here (that would synchronize with the device): the Python layer
// checks it; a bad value gives NaN or Inf, never an out-of-bounds access.
struct ForwardOutputs {
  at::Tensor loss, max, log_sum, n_positive, coef, positive_mean, grad_anchors, grad_candidates, grad_temperature;
};

// The forward of the plain op (Variant{}) and of its variants.
ForwardOutputs forward_impl(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
                            const at::Tensor& candidate_labels, const at::Tensor& temperature, const Variant& variant,
                            bool exclude_self, int64_t reduction, double eps,
                            const std::array<bool, 3>& compute_grad_mask) {
  check_reduction(reduction);
  const GradMask mask(compute_grad_mask, candidates.is_same(anchors));
  const bool compute_grad = mask.any();
  TORCH_CHECK(!(compute_grad && reduction == kNone), "compute_grad needs a scalar loss (reduction mean or sum)");
  const c10::cuda::CUDAGuard guard(anchors.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return dispatch_dtype(anchors.scalar_type(), [&](auto impl) {
    using Impl = decltype(impl);
    const Prepared pr = Impl::prepare(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, stream);
    const Forward f = Impl::forward(pr, exclude_self, variant, stream);
    at::Tensor scale = reduction == kMean ? 1.0 / (f.n_positive > 0).sum().clamp_min(1).to(at::kDouble)
                                          : at::ones({}, f.row_loss.options().dtype(at::kDouble));
    at::Tensor loss = reduction == kNone ? f.row_loss : (f.row_loss.to(at::kDouble).sum() * scale).to(at::kFloat);
    InputGrads grads{at::empty({0}, anchors.options()), at::empty({0}, candidates.options()),
                     at::empty({0}, temperature.options())};
    if (compute_grad) {
      at::Tensor weight = scale.to(at::kFloat).expand({anchors.size(0)}).contiguous();
      grads = Impl::backward(pr, weight, f.row_max, f.log_sum, f.n_positive, variant, f.coef, exclude_self, eps,
                             temperature, mask, stream);
    }
    return ForwardOutputs{loss, f.row_max, f.log_sum, f.n_positive, f.coef, f.positive_mean,
                          grads.anchors, grads.candidates, grads.temperature};
  });
}

// The recompute backward of the plain op (Variant{}, row_coef undefined) and of its variants.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const Variant& variant, const at::Tensor& row_max, const at::Tensor& row_log_sum,
    const at::Tensor& row_n_positive, const at::Tensor& row_coef, bool exclude_self, double eps,
    const std::array<bool, 3>& output_mask) {
  const int64_t n_rows = anchors.size(0);
  const GradMask mask(output_mask, candidates.is_same(anchors));
  check_vector(row_max, "row_max", n_rows, at::kFloat);
  check_vector(row_log_sum, "row_log_sum", n_rows, at::kFloat);
  check_vector(row_n_positive, "row_n_positive", n_rows, at::kInt);
  if (variant.denominator != kAll) {
    check_vector(row_coef, "row_coef", n_rows, at::kFloat);
    check_same_device(row_coef, anchors, "row_coef");
  }
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == n_rows, "grad_rows must have shape (", n_rows, ",), got ",
              grad_rows.sizes());
  for (const auto& [t, name] : {std::pair{&grad_rows, "grad_rows"}, {&row_max, "row_max"},
                                {&row_log_sum, "row_log_sum"}, {&row_n_positive, "row_n_positive"}}) {
    check_same_device(*t, anchors, name);
  }
  const c10::cuda::CUDAGuard guard(anchors.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor coef = variant.denominator != kAll ? row_coef.contiguous() : at::Tensor();
  return dispatch_dtype(anchors.scalar_type(), [&](auto impl) {
    using Impl = decltype(impl);
    const Prepared pr = Impl::prepare(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, stream);
    const InputGrads g = Impl::backward(pr, grad_rows.to(at::kFloat).contiguous(), row_max.contiguous(),
                                        row_log_sum.contiguous(), row_n_positive.contiguous(), variant, coef,
                                        exclude_self, eps, temperature, mask, stream);
    return std::make_tuple(g.anchors, g.candidates, g.temperature);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrastive_forward_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& anchor_labels,
    const at::Tensor& candidate_labels, const at::Tensor& temperature, bool exclude_self, int64_t reduction,
    double eps, std::array<bool, 3> compute_grad) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  const ForwardOutputs o = forward_impl(anchors, candidates, anchor_labels, candidate_labels, temperature, Variant{},
                                        exclude_self, reduction, eps, compute_grad);
  return {o.loss, o.max, o.log_sum, o.n_positive, o.grad_anchors, o.grad_candidates, o.grad_temperature};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_backward_cuda(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& row_max, const at::Tensor& row_log_sum, const at::Tensor& row_n_positive, bool exclude_self,
    double eps, std::array<bool, 3> output_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  return backward_impl(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, Variant{},
                       row_max, row_log_sum, row_n_positive, at::Tensor(), exclude_self, eps, output_mask);
}

// The variants (synthcl_fast/reference.py, contrastive_loss_variant, with beta = tau_plus = 0): the outputs of
// contrastive_variant_forward_cpu (m and S over the negatives, c_i, mean_p s_ip).
Variant checked_variant(int64_t denominator, const at::Tensor& positive_weight, const at::Tensor& anchors) {
  check_variant(denominator, positive_weight, anchors, at::kFloat);
  return Variant{static_cast<int>(denominator), positive_weight.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
contrastive_variant_forward_cuda(const at::Tensor& anchors, const at::Tensor& candidates,
                                 const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                                 const at::Tensor& temperature, const at::Tensor& positive_weight,
                                 int64_t denominator, bool exclude_self, int64_t reduction, double eps,
                                 std::array<bool, 3> compute_grad) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  const Variant variant = checked_variant(denominator, positive_weight, anchors);
  const ForwardOutputs o = forward_impl(anchors, candidates, anchor_labels, candidate_labels, temperature, variant,
                                        exclude_self, reduction, eps, compute_grad);
  return {o.loss, o.max, o.log_sum, o.n_positive, o.coef, o.positive_mean, o.grad_anchors, o.grad_candidates,
          o.grad_temperature};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_variant_backward_cuda(
    const at::Tensor& grad_rows, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& anchor_labels, const at::Tensor& candidate_labels, const at::Tensor& temperature,
    const at::Tensor& positive_weight, const at::Tensor& row_max, const at::Tensor& row_log_sum,
    const at::Tensor& row_n_positive, const at::Tensor& row_coef, int64_t denominator, bool exclude_self,
    double eps, std::array<bool, 3> output_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  const Variant variant = checked_variant(denominator, positive_weight, anchors);
  return backward_impl(grad_rows, anchors, candidates, anchor_labels, candidate_labels, temperature, variant,
                       row_max, row_log_sum, row_n_positive, row_coef, exclude_self, eps, output_mask);
}

// HCL's row statistics and their gradient (contrastive_cpu.cpp, "Hard negatives and debiasing", states them;
// the loss is formed from them in Python, reference.hard_negative_row_loss).
HardStatsOutputs hard_negative_stats_forward_cuda(const at::Tensor& anchors, const at::Tensor& candidates,
                                                  const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                                                  const at::Tensor& temperature, double beta, bool exclude_self,
                                                  double eps) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  check_beta(beta);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return dispatch_dtype(anchors.scalar_type(), [&](auto impl) {
    using Impl = decltype(impl);
    const Prepared pr = Impl::prepare(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, stream);
    return Impl::hard_forward(pr, exclude_self, beta, stream);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hard_negative_stats_backward_cuda(
    const at::Tensor& grad_lse, const at::Tensor& grad_positive_mean, const at::Tensor& anchors,
    const at::Tensor& candidates, const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
    const at::Tensor& temperature, double beta, const at::Tensor& row_n_negative, const at::Tensor& row_n_positive,
    const at::Tensor& row_reference, const at::Tensor& row_log_sum, bool exclude_self, double eps,
    std::array<bool, 3> output_mask) {
  check_contrastive_inputs(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, c10::kCUDA);
  check_beta(beta);
  const GradMask mask(output_mask, candidates.is_same(anchors));
  check_hard_backward_inputs(grad_lse, grad_positive_mean, row_n_negative, row_n_positive, row_reference,
                             row_log_sum, anchors, at::kFloat);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return dispatch_dtype(anchors.scalar_type(), [&](auto impl) {
    using Impl = decltype(impl);
    const Prepared pr = Impl::prepare(anchors, candidates, anchor_labels, candidate_labels, temperature, eps, stream);
    const InputGrads g = Impl::hard_backward(pr, grad_lse.contiguous(), grad_positive_mean.contiguous(),
                                             row_n_negative.contiguous(), row_n_positive.contiguous(),
                                             row_reference.contiguous(), row_log_sum.contiguous(), beta,
                                             exclude_self, eps, temperature, mask, stream);
    return std::make_tuple(g.anchors, g.candidates, g.temperature);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(synthcl_fast, CUDA, m) {
  m.impl("contrastive_forward", &contrastive_forward_cuda);
  m.impl("contrastive_backward", &contrastive_backward_cuda);
  m.impl("contrastive_variant_forward", &contrastive_variant_forward_cuda);
  m.impl("contrastive_variant_backward", &contrastive_variant_backward_cuda);
  m.impl("hard_negative_stats_forward", &hard_negative_stats_forward_cuda);
  m.impl("hard_negative_stats_backward", &hard_negative_stats_backward_cuda);
}

}  // namespace synthcl_fast
