// Pieces of kshare's AMX code shared by the matrix product (amx_gemm.cc) and the 3x3
// convolution (amx_conv3x3.cc): the three-piece bfloat16 split of 16 floats, the 16 x 16 register
// transpose, the tile configuration, and the walk through a k step's six piece products. Internal:
// only those two files include it, inside their x86-64 AVX-512/AMX target regions.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace kshare_amx {
namespace tiles {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,amx-tile,amx-bf16")

// The three pieces of 16 floats (the bits of amx_gemm.cc's scalar Split), as named registers. The
// packs kept them in arrays indexed in loops, and GCC put those on the stack (12 extra 64-byte
// stores and 6 loads for every 32 values packed); with that and High16's static index (below) gone,
// a 256 x 256 operand packs from L2 in 10.3-10.8 us instead of 22.0-25.2 (rows, left or right) and
// in 19.1-19.4 instead of 23.9-25.2 (columns, the transposing right pack, before its float
// transpose below took another ~25 % off it: 27.6-30.6 us against 37.3-38.8 in a slower stretch of
// the host): the same bits, timed by throwaway harnesses over amx_gemm.cc, 2026-12-06
// (bench/cpu-kernels-notes.md, twenty-sixth session).
struct Pieces {
  __m512i h, m, l;
};

// Split for 16 floats at once (the same bits as amx_gemm.cc's Split); clears the lanes of
// *allFinite that hold an infinity or NaN.
inline Pieces Split16(__m512 f, __mmask16* allFinite) {
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u)), expo = _mm512_set1_epi32(0x7f800000);
  const __m512i u = _mm512_castps_si512(f);
  *allFinite &= _mm512_cmpneq_epi32_mask(_mm512_and_si512(u, expo), expo);
  const __m512i hu = _mm512_and_si512(u, top);
  __m512 r = _mm512_sub_ps(f, _mm512_castsi512_ps(hu));
  const __m512i mu = _mm512_and_si512(_mm512_castps_si512(r), top);
  r = _mm512_sub_ps(r, _mm512_castsi512_ps(mu));
  return {hu, mu, _mm512_and_si512(_mm512_castps_si512(r), top)};
}

// The high halves of 32 float32 bit patterns (a: 0-15, b: 16-31) as 32 bfloat16 in order. Not a
// function-local static index: its guard was checked on every call, and the packs kept their
// registers on the stack around that check.
inline __m512i High16(__m512i a, __m512i b) {
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21,
                                       19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(a, odd, b);
}

inline __mmask16 Tail(int64_t n) { return n >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << std::max<int64_t>(n, 0)) - 1); }

// r[i] holds row i of a 16 x 16 matrix of 32-bit words; afterwards r[i] holds column i.
__attribute__((always_inline)) inline void Transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) {
      t[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; j++) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
  }
}

struct TileConfig {
  uint8_t palette = 1, startRow = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// A 32 x 32 block of c in accumulator tiles 0-3 (+)= one k step (32) of the product, in all six
// piece pairs: loadLeft(p) loads piece p of the left operand's two 16-row tiles into tiles 4 and 5,
// loadRight(p) piece p of the right operand's two 16-column tiles into 6 and 7. The order of the
// loads fixes which pieces each product multiplies: lo*hi, mid*hi, mid*mid, hi*mid, hi*hi, hi*lo.
// Each step changes one operand only (a walk through all six piece pairs), so a k tile takes 14
// tile loads for its 24 products; the earlier order (hi*hi first) took 16, and a 256 x 256 x 256
// product with both operands packed in L2 ran 6-11 % slower with it (medians 97.9-121.6 us against
// 92.1-112.2, alternating in one throwaway process, 2-core Xeon with AMX, 2026-12-05). Small terms
// first also adds them before the large ones.
template <class LoadLeft, class LoadRight>
__attribute__((always_inline)) inline void SixPieceProducts(const LoadLeft& loadLeft, const LoadRight& loadRight) {
  const auto products = [] {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  };
  loadLeft(2), loadRight(0), products();  // lo * hi
  loadLeft(1), products();                // mid * hi
  loadRight(1), products();               // mid * mid
  loadLeft(0), products();                // hi * mid
  loadRight(0), products();               // hi * hi
  loadRight(2), products();               // hi * lo
}

// Tiles 0-7 as 16 rows of 64 bytes (float32 accumulators 0-3, bfloat16 operands 4-7).
inline void ConfigureTiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; t++) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

#pragma GCC pop_options

}  // namespace tiles
}  // namespace kshare_amx
#endif  // __x86_64__
