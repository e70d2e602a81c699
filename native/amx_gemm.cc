// Float32 matrix products on Intel AMX tiles, for kshare's 1x1 convolution (pointwise_conv.cc).
//
// Why: the 1x1 convolution's products are about 45 % of a ConvMixer-256/8 training step on CPU,
// and oneDNN's AVX-512 sgemm already runs them near the FMA peak (~200-230 GFLOP/s a core on the
// 2-core Intel Xeon of bench/cpu-kernels-notes.md). AMX's bfloat16 tile product is ~14x that
// (3.4 TFLOP/s a core, a throwaway probe), but bfloat16 keeps 8 bits of a float32's 24. So each
// operand is split into three bfloat16 pieces, x = hi + mid + lo (truncation: each piece is the
// float32 remainder's top 16 bits, so the split is exact to float32), and the six products whose
// size matters (hi*hi, hi*mid, mid*hi, mid*mid, hi*lo, lo*hi; the three dropped are below
// 2^-24 of the value) are accumulated in the float32 tiles. Error against a double-precision
// product, relative to the sum of |terms|, on a 256 x 256 x 256 product: 1.1e-7, oneDNN's sgemm
// 2.1e-7 (throwaway C program).
//
// Measured speed (2-core Intel Xeon, one thread, throwaway harnesses; history in
// bench/cpu-kernels-notes.md): a 256 x 256 x 256 product with its operands packed in L2, 66.7 us on
// a quiet host (2026-12-06: 5.43 ns a tile product, ~500 GFLOP/s in float32 terms, ~89 % of the
// tile unit's peak), 83-108 us in the ninth session against oneDNN sgemm's 147-188; packing a
// 256 x 256 operand from L2 takes 10.3-10.8 us (longer transposing, in PackRightColumns;
// 2026-12-06, see Pieces). Within a training step the products run slower (6.7-9 ns a tile
// product in the bench's quiet rounds; not measured why: operands and outputs leaving L2 between
// images, or the host). In the 1x1 operator, against
// sgemm in one process (`node dist/bench/route-ab.js --only amx --threads 1,2 --rounds 4`,
// bench/results/amx-ab.json, 2026-12-06, 1 / 2 threads): (32,256,16,16) forward x1.61 / x1.47,
// forward + backward x1.54 / x1.40; ConvMixer-256/8 training step x1.26 / x1.23, ConvMixer-256/16
// inference at batch 32 x1.15 / x1.10 (before the packs' fix, 2026-12-03: x1.18-1.27 forward +
// backward, x1.05-1.11 the step).
//
// Infinities and NaNs cannot be split (inf times another operand's zero piece would be NaN), so the
// pack marks an operand holding one (Packed::finite) and the caller takes a float32 sgemm for it;
// such an operand's pieces are never used. Values so small that a piece is a float32 subnormal
// lose that piece (AMX treats bfloat16 subnormals as
// zero): below ~1e-33 the relative error grows toward 2^-8.
#include "amx_gemm.h"

#include "amx_tiles.h"

#include "cpu_kernel_common.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>

namespace kshare_amx {

namespace {

constexpr int64_t kPieces = 3;
std::atomic<int64_t> products{0}, tileProducts{0}, productNs{0};

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

#if defined(__x86_64__)
// CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE; then ask the kernel for the tile data
// state (Linux 5.16+, arch_prctl ARCH_REQ_XCOMP_PERM), once for the process.
bool Available() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}
#else
bool Available() { return false; }
#endif

}  // namespace

bool Enabled() {
  return kshare::EnvSwitchOn("KSHARE_NATIVE_AMX") && kshare::NativeIsaCap() == kshare::IsaCap::kNone && Available();
}

int64_t Products() { return products.load(std::memory_order_relaxed); }
int64_t TileProducts() { return tileProducts.load(std::memory_order_relaxed); }
int64_t ProductNanoseconds() { return productNs.load(std::memory_order_relaxed); }
bool Supported() { return Available(); }

void PieceStorage::Reserve(int64_t elems) {
  pieceElems = RoundUp(elems, 32);
  const int64_t need = kPieces * pieceElems + 32;  // + 64 bytes to align
  if (need > capacity) {
    storage.reset(new uint16_t[need]);
    capacity = need;
  }
  base = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(storage.get()) + 63) & ~uintptr_t(63));
}

void RecordProducts(int64_t issued, int64_t ns) {
  products.fetch_add(1, std::memory_order_relaxed);
  tileProducts.fetch_add(issued, std::memory_order_relaxed);
  productNs.fetch_add(ns, std::memory_order_relaxed);
}

namespace {

void Reserve(Packed* out, int64_t rows, int64_t cols, int64_t rowTiles, int64_t colTiles) {
  out->rows = rows;
  out->cols = cols;
  out->rowTiles = rowTiles;
  out->colTiles = colTiles;
  out->PieceStorage::Reserve(rowTiles * colTiles * 512);
}

// The three pieces of a finite f as float32 bit patterns with the low 16 bits zero: the top 16
// bits of f, of f - hi and of f - hi - mid (each subtraction exact). For an infinity or NaN they
// are meaningless (the caller checks Packed::finite).
inline void Split(float f, uint32_t* h, uint32_t* m, uint32_t* l) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t hu = u & 0xffff0000u;
  float hf, r, mf;
  std::memcpy(&hf, &hu, 4);
  r = f - hf;
  std::memcpy(&u, &r, 4);
  const uint32_t mu = u & 0xffff0000u;
  std::memcpy(&mf, &mu, 4);
  r -= mf;
  std::memcpy(&u, &r, 4);
  *h = hu;
  *m = mu;
  *l = u & 0xffff0000u;
}

// Element offsets inside a piece.
inline int64_t LeftAt(int64_t colTiles, int64_t i, int64_t j) {
  return ((i / 16) * colTiles + j / 32) * 512 + (i % 16) * 32 + (j % 32);
}
inline int64_t RightAt(int64_t colTiles, int64_t i, int64_t j) {
  return ((i / 32) * colTiles + j / 16) * 512 + ((i % 32) / 2) * 32 + (j % 16) * 2 + (i & 1);
}

template <class At>
bool PackScalar(const float* src, int64_t rows, int64_t cols, int64_t rs, int64_t cs, const Packed& p, At at) {
  uint16_t *h = p.base, *m = h + p.pieceElems, *l = m + p.pieceElems;
  bool finite = true;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) {
      const float v = src[i * rs + j * cs];
      uint32_t a, b, c;
      finite = finite && std::isfinite(v);
      Split(v, &a, &b, &c);
      const int64_t o = at(p.colTiles, i, j);
      h[o] = static_cast<uint16_t>(a >> 16);
      m[o] = static_cast<uint16_t>(b >> 16);
      l[o] = static_cast<uint16_t>(c >> 16);
    }
  return finite;
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,amx-tile,amx-bf16")

using namespace tiles;

// Left operand, rows contiguous (colStride 1): 32 floats of a row make one tile row.
bool PackLeftRows(const float* src, int64_t rows, int64_t cols, int64_t rs, const Packed& p) {
  uint16_t *h = p.base, *m = h + p.pieceElems, *l = m + p.pieceElems;
  __mmask16 finite = 0xffff;
  // Bounds in locals: the stores through uint16_t* could otherwise alias p's fields (reloaded each step).
  const int64_t rowEnd = p.rowTiles * 16, colTiles = p.colTiles;
  for (int64_t i = 0; i < rowEnd; i++) {
    // Rows past the matrix are zero: an all-clear mask loads nothing (and cannot fault).
    const float* row = src + std::min(i, rows - 1) * rs;
    const bool inside = i < rows;
    for (int64_t kt = 0; kt < colTiles; kt++) {
      const int64_t j = kt * 32;
      const Pieces a = Split16(_mm512_maskz_loadu_ps(inside ? Tail(cols - j) : 0, row + j), &finite);
      const Pieces b = Split16(_mm512_maskz_loadu_ps(inside ? Tail(cols - j - 16) : 0, row + j + 16), &finite);
      const int64_t o = LeftAt(colTiles, i, j);
      _mm512_store_si512(h + o, High16(a.h, b.h));
      _mm512_store_si512(m + o, High16(a.m, b.m));
      _mm512_store_si512(l + o, High16(a.l, b.l));
    }
  }
  return finite == 0xffff;
}

// Right operand, rows contiguous (colStride 1): rows 2t and 2t + 1, 16 columns, make one VNNI
// tile row (each 32-bit word: row 2t's value low, row 2t + 1's high).
bool PackRightRows(const float* src, int64_t rows, int64_t cols, int64_t rs, const Packed& p) {
  uint16_t *h = p.base, *m = h + p.pieceElems, *l = m + p.pieceElems;
  __mmask16 finite = 0xffff;
  const int64_t rowEnd = p.rowTiles * 32, colTiles = p.colTiles, colEnd = colTiles * 16;  // locals: see PackLeftRows
  for (int64_t i = 0; i < rowEnd; i += 2) {
    // Rows past the matrix are zero: an all-clear mask loads nothing (and cannot fault).
    const float* even = src + std::min(i, rows - 1) * rs;
    const float* odd = src + std::min(i + 1, rows - 1) * rs;
    for (int64_t j = 0; j < colEnd; j += 16) {
      const __mmask16 t = Tail(cols - j);
      const Pieces a = Split16(_mm512_maskz_loadu_ps(i < rows ? t : 0, even + j), &finite);
      const Pieces b = Split16(_mm512_maskz_loadu_ps(i + 1 < rows ? t : 0, odd + j), &finite);
      const int64_t o = RightAt(colTiles, i, j);
      _mm512_store_si512(h + o, _mm512_or_si512(b.h, _mm512_srli_epi32(a.h, 16)));
      _mm512_store_si512(m + o, _mm512_or_si512(b.m, _mm512_srli_epi32(a.m, 16)));
      _mm512_store_si512(l + o, _mm512_or_si512(b.l, _mm512_srli_epi32(a.l, 16)));
    }
  }
  return finite == 0xffff;
}

// Right operand, columns contiguous (rowStride 1, a transposed matrix): 16 columns' values for 16
// rows transposed as float32 in registers, so each row's 16 values lie in one register, then paired
// into VNNI words as in PackRightRows. Transposing the floats once, before the split, takes two
// 16 x 16 transposes a 32-row block where transposing each piece's words took three.
bool PackRightColumns(const float* src, int64_t rows, int64_t cols, int64_t cs, const Packed& p) {
  uint16_t *h = p.base, *m = h + p.pieceElems, *l = m + p.pieceElems;
  __mmask16 finite = 0xffff;
  const int64_t rowEnd = p.rowTiles * 32, colTiles = p.colTiles, colEnd = colTiles * 16;  // locals: see PackLeftRows
  for (int64_t i = 0; i < rowEnd; i += 16) {
    const __mmask16 rowMask = Tail(rows - i);
    for (int64_t j0 = 0; j0 < colEnd; j0 += 16) {
      __m512i r[16];
      for (int c = 0; c < 16; c++) {
        // Columns past the matrix are zero: an all-clear mask loads nothing (and cannot fault).
        const int64_t j = std::min(j0 + c, cols - 1);
        r[c] = _mm512_castps_si512(_mm512_maskz_loadu_ps(j0 + c < cols ? rowMask : 0, src + j * cs + i));
      }
      Transpose16(r);  // r[t]: row i + t, columns j0..j0 + 15
      const int64_t o = RightAt(colTiles, i, j0);
      for (int t = 0; t < 16; t += 2) {
        const Pieces a = Split16(_mm512_castsi512_ps(r[t]), &finite), b = Split16(_mm512_castsi512_ps(r[t + 1]), &finite);
        _mm512_store_si512(h + o + t * 16, _mm512_or_si512(b.h, _mm512_srli_epi32(a.h, 16)));
        _mm512_store_si512(m + o + t * 16, _mm512_or_si512(b.m, _mm512_srli_epi32(a.m, 16)));
        _mm512_store_si512(l + o + t * 16, _mm512_or_si512(b.l, _mm512_srli_epi32(a.l, 16)));
      }
    }
  }
  return finite == 0xffff;
}

// The walk through the six piece products: tiles::SixPieceProducts (amx_tiles.h).
// Returns the tile products it issued (24 a 32 x 32 block of c a k tile), for TileProducts().
int64_t GemmTiles(const Packed& left, const Packed& right, float* c, int64_t ldc, float beta, int64_t rowBegin, int64_t rowEnd,
                  Prefetch prefetch) {
  ConfigureTiles();
  const int64_t n = right.cols, kTiles = left.colTiles, nTiles = right.colTiles;
  const uint16_t *a[3] = {left.piece(0), left.piece(1), left.piece(2)}, *b[3] = {right.piece(0), right.piece(1), right.piece(2)};
  alignas(64) float edge[32 * 32];
  // The prefetch spread evenly over the k steps (8 lines a step for a 256-channel image behind a
  // 256 x 256 x 256 product): the tile loads need the load slots, and a prefetch of 192 lines a k
  // step (of the product's own next operands) slowed it by ~50 % (twenty-fourth session's notes).
  const char* pf = static_cast<const char*>(prefetch.data);
  const char* pfEnd = pf ? pf + prefetch.bytes : nullptr;
  const int64_t steps = (rowEnd - rowBegin + 31) / 32 * ((nTiles * 16 + 31) / 32) * kTiles;  // k steps of 32 x 32 blocks
  const int64_t perStep = pf ? ((prefetch.bytes + 63) / 64 + steps - 1) / std::max<int64_t>(steps, 1) : 0;
  for (int64_t j = 0; j < nTiles * 16; j += 32) {
    for (int64_t i = rowBegin; i < rowEnd; i += 32) {
      const bool whole = i + 32 <= rowEnd && j + 32 <= n;
      float* dst = whole ? c + i * ldc + j : edge;
      const int64_t ld = whole ? ldc : 32;
      const int64_t rowsHere = std::min<int64_t>(32, rowEnd - i), colsHere = std::min<int64_t>(32, n - j);
      if (!whole) {
        std::fill_n(edge, 32 * 32, 0.f);
        if (beta != 0.f)
          for (int64_t r = 0; r < rowsHere; r++) std::copy_n(c + (i + r) * ldc + j, colsHere, edge + r * 32);
      }
      if (beta != 0.f) {
        _tile_loadd(0, dst, ld * 4);
        _tile_loadd(1, dst + 16, ld * 4);
        _tile_loadd(2, dst + 16 * ld, ld * 4);
        _tile_loadd(3, dst + 16 * ld + 16, ld * 4);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      const int64_t aRow = (i / 16) * kTiles * 512, aNext = kTiles * 512;
      for (int64_t kt = 0; kt < kTiles; kt++) {
        const int64_t oa = aRow + kt * 512, ob = (kt * nTiles + j / 16) * 512;
        SixPieceProducts(
            [&](int p) {
              _tile_loadd(4, a[p] + oa, 64);
              _tile_loadd(5, a[p] + oa + aNext, 64);
            },
            [&](int p) {
              _tile_loadd(6, b[p] + ob, 64);
              _tile_loadd(7, b[p] + ob + 512, 64);
            });
        for (int64_t q = 0; q < perStep && pf < pfEnd; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
      }
      _tile_stored(0, dst, ld * 4);
      _tile_stored(1, dst + 16, ld * 4);
      _tile_stored(2, dst + 16 * ld, ld * 4);
      _tile_stored(3, dst + 16 * ld + 16, ld * 4);
      if (!whole)
        for (int64_t r = 0; r < rowsHere; r++) std::copy_n(edge + r * 32, colsHere, c + (i + r) * ldc + j);
    }
  }
  _tile_release();
  return steps * 24;
}

// The 16 x 16 block of rows [r0, r0 + 16) and columns [c0, c0 + 16) (partial blocks masked),
// summed over the parts in order and stored transposed.
void TransposeSumBlock(const float* const* parts, int64_t count, int64_t rows, int64_t cols, float* dst, int64_t r0, int64_t c0) {
  const __mmask16 colMask = Tail(cols - c0), rowMask = Tail(rows - r0);
  __m512i r[16];
  for (int i = 0; i < 16; i++) {
    __m512 v = _mm512_setzero_ps();
    if (r0 + i < rows) {
      const int64_t at = (r0 + i) * cols + c0;
      v = _mm512_maskz_loadu_ps(colMask, parts[0] + at);
      for (int64_t p = 1; p < count; p++) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(colMask, parts[p] + at));
    }
    r[i] = _mm512_castps_si512(v);
  }
  Transpose16(r);
  for (int j = 0; j < 16 && c0 + j < cols; j++) _mm512_mask_storeu_ps(dst + (c0 + j) * rows + r0, rowMask, _mm512_castsi512_ps(r[j]));
}

#pragma GCC pop_options
#endif  // __x86_64__

}  // namespace

void TransposeSum(const float* const* parts, int64_t count, int64_t rows, int64_t cols, float* dst, int64_t rowBegin, int64_t rowEnd) {
#if defined(__x86_64__)
  if (rowBegin % 16 != 0 || count < 1) std::abort();  // callers' bug
  for (int64_t r0 = rowBegin; r0 < std::min(rowEnd, rows); r0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) TransposeSumBlock(parts, count, rows, cols, dst, r0, c0);
#else
  (void)parts, (void)count, (void)rows, (void)cols, (void)dst, (void)rowBegin, (void)rowEnd;
  std::abort();  // Enabled() is false off x86-64
#endif
}

void PackLeft(const float* src, int64_t rows, int64_t cols, int64_t rowStride, int64_t colStride, Packed* out) {
  Reserve(out, rows, cols, RoundUp(rows, 32) / 16, RoundUp(cols, 32) / 32);
#if defined(__x86_64__)
  if (colStride == 1) {
    out->finite = PackLeftRows(src, rows, cols, rowStride, *out);
    return;
  }
#endif
  std::fill_n(out->base, kPieces * out->pieceElems, uint16_t(0));
  out->finite = PackScalar(src, rows, cols, rowStride, colStride, *out, LeftAt);
}

void PackRight(const float* src, int64_t rows, int64_t cols, int64_t rowStride, int64_t colStride, Packed* out) {
  Reserve(out, rows, cols, RoundUp(rows, 32) / 32, RoundUp(cols, 32) / 16);
#if defined(__x86_64__)
  if (colStride == 1 || rowStride == 1) {
    out->finite = colStride == 1 ? PackRightRows(src, rows, cols, rowStride, *out) : PackRightColumns(src, rows, cols, colStride, *out);
    return;
  }
#endif
  std::fill_n(out->base, kPieces * out->pieceElems, uint16_t(0));
  out->finite = PackScalar(src, rows, cols, rowStride, colStride, *out, RightAt);
}

void Gemm(const Packed& left, const Packed& right, float* c, int64_t ldc, float beta, int64_t rowBegin, int64_t rowEnd,
          Prefetch prefetch) {
  if (rowEnd <= rowBegin || right.cols == 0) return;
  if (left.colTiles != right.rowTiles || rowBegin % 32 != 0 || rowEnd > left.rows) std::abort();  // callers' bug
#if defined(__x86_64__)
  // Two clock reads a call (~50 ns against ~100 us for a 256 x 256 x 256 product).
  const auto start = std::chrono::steady_clock::now();
  const int64_t issued = GemmTiles(left, right, c, ldc, beta, rowBegin, rowEnd, prefetch);
  RecordProducts(issued, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
#else
  (void)left, (void)right, (void)c, (void)ldc, (void)beta, (void)prefetch;
  std::abort();  // Enabled() is false off x86-64
#endif
}

}  // namespace kshare_amx
