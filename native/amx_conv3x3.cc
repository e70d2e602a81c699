// 3x3 convolution (stride 1, padding 1, dilation 1, groups 1, no bias) of float32 CPU tensors, NCHW
// or channels-last, on Intel AMX tiles at float32 accuracy (the three-piece bfloat16 split of
// amx_gemm.cc), registered as libtorch operators (kshare::conv3x3 with autograd,
// kshare::conv3x3_backward) so that the addon's schema-driven `call` reaches them like any ATen
// operator. Where AMX is off or a call does not fit (channels not multiples of 32 or more than
// 256 x 256, fewer channels-last images than threads, an infinity or NaN in an operand) they run
// libtorch's convolution instead, so the operator is always correct.
//
// Why: SE-ResNet's training step on CPU spends ~80 % of its time in its 3x3 convolutions, which
// kshare and PyTorch both ran through the same oneDNN code (bench/cpu-kernels-notes.md): at parity
// there was no margin to gain elsewhere. oneDNN's AVX-512 convolution runs near the FMA peak; the
// tile unit, even after the six piece products a float32 product takes, has ~1.7x headroom.
//
// How: each image is padded into a grid of (H + 1) x (W + 1) pixels, the row and column of zeros
// shared by neighbouring rows and images, so the input under tap (ky, kx) of output pixel q is grid
// pixel q + ky * (W + 1) + kx. With the pixels as the product's rows (the left operand, packed
// [pixel][channel]), a tap's shift is a whole number of 64-byte tile rows: all nine taps read one
// packed copy of the image, with aligned tile loads (the columns as the right operand,
// [channel pair][pixel], took 30 % longer with the shifted loads splitting cache lines; throwaway
// harness, 2026-12-06). The forward is then a product over k = 9 taps x C of the grid (pixels x C,
// shifted) by the weight (9C x O), and the input gradient the same product of the grad output with
// the weight flipped and transposed. The weight gradient, k = pixels, multiplies the grad output
// (O x pixels) by the image in pixel pairs, packed twice (pairs starting at even and at odd grid
// pixels) so that every tap's shift is again whole tile rows. Grid pixels outside the image (the
// pad column, the pad row, 6-21 % of a SE-ResNet stage's grid) are computed and dropped.
//
// Measured speed against libtorch's (oneDNN's) convolution in one process, batch 32, 1 / 2 threads
// (2-core Xeon with AMX, 2026-12-06; `node dist/bench/route-ab.js --only conv3x3 --threads 1,2
// --rounds 4`, bench/results/conv3x3-ab.json): forward + both gradients at SE-ResNet's stages,
// NCHW, (32,64,32,32) x1.68 / x1.69, (32,128,16,16) x1.40 / x1.38, (32,256,8,8) x1.14 / x1.28
// (channels-last x1.63 / x1.54, x1.42 / x1.43, x1.22 / x1.12); the SE-ResNet d=2 shared training
// step x1.20 / x1.32 NCHW, ResNet-18 (CIFAR) shared x1.24 / x1.15. How the group size was chosen:
// kGroupBytesForward; history and the variants not kept (stride 2, 16 input channels):
// bench/cpu-kernels-notes.md, twenty-seventh session.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "amx_gemm.h"
#include "amx_tiles.h"
#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

namespace kshare_conv3 {

namespace {

int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The padded grid of `images` images of c channels, h x w (see the file comment). Output pixel
// (image g, y, x) is grid pixel g * plane + y * wp + x; input pixel (g, y, x) lies at grid pixel
// g * plane + (y + 1) * wp + x + 1.
struct Grid {
  int64_t c, h, w, images;
  int64_t wp, plane, q, qr, len;  // row pitch, pixels an image, output grid pixels, q rounded to 32, packed pixels
  Grid(int64_t c_, int64_t h_, int64_t w_, int64_t images_) : c(c_), h(h_), w(w_), images(images_) {
    wp = w + 1;
    plane = (h + 1) * wp;
    q = images * plane;
    qr = RoundUp(q, 32);
    // The last k step reads up to qr - 1 + 2 * wp + 2 (+ 32 for the weight gradient's pairs).
    len = RoundUp(qr + 2 * wp + 2 + 32, 32);
  }
  int64_t hw() const { return h * w; }
};

// A run of output pixels that are consecutive both in a 32-pixel block of the grid and in one
// image row: block pixels [src, src + len) are image img's pixels [dst, dst + len).
struct Run {
  int32_t src, img, dst, len;
};

// The runs of each 32-pixel block of the output grid.
std::vector<std::vector<Run>> Runs(const Grid& s) {
  std::vector<std::vector<Run>> out(s.qr / 32);
  for (int64_t q = 0; q < s.q; q++) {
    const int64_t g = q / s.plane, r = q % s.plane, y = r / s.wp, x = r % s.wp;
    if (y >= s.h || x >= s.w) continue;
    auto& v = out[q / 32];
    const int32_t src = q % 32, dst = y * s.w + x;
    if (!v.empty() && v.back().src + v.back().len == src && v.back().img == g && v.back().dst + v.back().len == dst) v.back().len++;
    else v.push_back({src, static_cast<int32_t>(g), dst, 1});
  }
  return out;
}

using PieceBuffer = kshare_amx::PieceStorage;  // one a thread, reused between calls

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,amx-tile,amx-bf16")

using namespace kshare_amx::tiles;

// The grid of `count` images (NCHW, or NHWC where channelsLast; the rest of the group zero) as the
// left operand's rows: out piece p [pixel][channel], s.len pixels, every pixel written (pads zero).
// Returns false if an input value is an infinity or NaN.
bool PackPixels(const float* x, bool channelsLast, int64_t count, const Grid& s, const PieceBuffer& out) {
  __mmask16 finite = 0xffff;
  const int64_t hw = s.hw(), c = s.c;
  uint16_t *h = out.piece(0), *m = out.piece(1), *l = out.piece(2);
  auto zero = [&](int64_t pixel, int64_t pixels) {
    for (int p = 0; p < 3; p++) std::memset(out.piece(p) + pixel * c, 0, pixels * c * 2);
  };
  for (int64_t g = 0; g < count; g++) {
    const int64_t base = g * s.plane;
    zero(base, s.wp);  // the pad row above the image
    for (int64_t y = 0; y < s.h; y++) zero(base + (y + 1) * s.wp, 1);  // each row's pad column
    if (channelsLast) {
      for (int64_t y = 0; y < s.h; y++)
        for (int64_t xx = 0; xx < s.w; xx++) {
          const float* src = x + ((g * s.h + y) * s.w + xx) * c;
          const int64_t o = (base + (y + 1) * s.wp + 1 + xx) * c;
          for (int64_t cb = 0; cb < c; cb += 32) {
            const Pieces a = Split16(_mm512_loadu_ps(src + cb), &finite), b = Split16(_mm512_loadu_ps(src + cb + 16), &finite);
            _mm512_store_si512(h + o + cb, High16(a.h, b.h));
            _mm512_store_si512(m + o + cb, High16(a.m, b.m));
            _mm512_store_si512(l + o + cb, High16(a.l, b.l));
          }
        }
      continue;
    }
    for (int64_t cb = 0; cb < c; cb += 32)
      for (int64_t y = 0; y < s.h; y++)
        for (int64_t x0 = 0; x0 < s.w; x0 += 16) {
          const __mmask16 mask = Tail(s.w - x0);
          const float* src = x + (g * c + cb) * hw + y * s.w + x0;
          __m512i lo[16], hi[16];
          for (int k = 0; k < 16; k++) {
            lo[k] = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src + k * hw));
            hi[k] = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src + (k + 16) * hw));
          }
          Transpose16(lo);  // lo[t]: pixel x0 + t, channels cb .. cb + 15
          Transpose16(hi);
          const int64_t o = (base + (y + 1) * s.wp + 1 + x0) * c + cb, n = std::min<int64_t>(16, s.w - x0);
          for (int64_t t = 0; t < n; t++) {
            const Pieces a = Split16(_mm512_castsi512_ps(lo[t]), &finite), b = Split16(_mm512_castsi512_ps(hi[t]), &finite);
            _mm512_storeu_si512(h + o + t * c, High16(a.h, b.h));
            _mm512_storeu_si512(m + o + t * c, High16(a.m, b.m));
            _mm512_storeu_si512(l + o + t * c, High16(a.l, b.l));
          }
        }
  }
  zero(count * s.plane, s.len - count * s.plane);  // missing images and the margin
  return finite == 0xffff;
}

// Pixel pairs of a PackPixels grid for the weight gradient's right operand: out piece p
// [pair][channel][2], pair i = grid pixels 2i + parity and 2i + parity + 1.
void PackPairs(const PieceBuffer& pixels, const Grid& s, int64_t parity, int64_t pairs, const PieceBuffer& out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3,
                                      34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54, 22, 53, 21, 52, 20,
                                      51, 19, 50, 18, 49, 17, 48, 16);
  const int64_t c = s.c;
  for (int p = 0; p < 3; p++)
    for (int64_t i = 0; i < pairs; i++) {
      const uint16_t* a = pixels.piece(p) + (2 * i + parity) * c;
      uint16_t* d = out.piece(p) + i * 2 * c;
      for (int64_t c0 = 0; c0 < c; c0 += 32) {
        const __m512i va = _mm512_load_si512(a + c0), vb = _mm512_load_si512(a + c + c0);
        _mm512_store_si512(d + c0 * 2, _mm512_permutex2var_epi16(va, lo, vb));
        _mm512_store_si512(d + c0 * 2 + 32, _mm512_permutex2var_epi16(va, hi, vb));
      }
    }
}

// Output channels [jBegin, jEnd) (jBegin a multiple of 32) of y (`count` images of o channels, NCHW
// or NHWC) = the grid's images convolved with the weight packed as the right operand (9 taps x C
// rows, o columns). Returns the tile products issued.
int64_t ForwardTiles(const PieceBuffer& pixels, const kshare_amx::Packed& weight, const Grid& s, const std::vector<std::vector<Run>>& runs,
                     int64_t count, int64_t o, int64_t jBegin, int64_t jEnd, bool channelsLast, float* y) {
  ConfigureTiles();
  const int64_t nTiles = weight.colTiles, ck = s.c / 32, hw = s.hw();
  const uint16_t *a[3] = {pixels.piece(0), pixels.piece(1), pixels.piece(2)}, *b[3] = {weight.piece(0), weight.piece(1), weight.piece(2)};
  const int64_t rowBytes = s.c * 2, aNext = 16 * s.c;
  alignas(64) float acc[32 * 32], out[32 * 32];
  int64_t steps = 0;
  for (int64_t j = jBegin; j < jEnd; j += 32) {
    const int64_t colsHere = std::min<int64_t>(32, o - j);
    for (int64_t i = 0; i < s.qr; i += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t t = 0; t < 9; t++) {
        const int64_t shift = (t / 3) * s.wp + t % 3;
        for (int64_t kt = 0; kt < ck; kt++) {
          const int64_t oa = (i + shift) * s.c + kt * 32, ob = ((t * ck + kt) * nTiles + j / 16) * 512;
          SixPieceProducts(
              [&](int p) {
                _tile_loadd(4, a[p] + oa, rowBytes);
                _tile_loadd(5, a[p] + oa + aNext, rowBytes);
              },
              [&](int p) {
                _tile_loadd(6, b[p] + ob, 64);
                _tile_loadd(7, b[p] + ob + 512, 64);
              });
        }
      }
      steps += 9 * ck;
      _tile_stored(0, acc, 128);
      _tile_stored(1, acc + 16, 128);
      _tile_stored(2, acc + 512, 128);
      _tile_stored(3, acc + 528, 128);
      if (channelsLast) {
        // acc[pixel][channel] is already the output's layout: each pixel's channels to its place.
        const __mmask16 m0 = Tail(colsHere), m1 = Tail(colsHere - 16);
        for (const Run& r : runs[i / 32]) {
          if (r.img >= count) continue;
          for (int64_t p = 0; p < r.len; p++) {
            float* dst = y + (r.img * hw + r.dst + p) * o + j;
            const float* src = acc + (r.src + p) * 32;
            _mm512_mask_storeu_ps(dst, m0, _mm512_maskz_loadu_ps(m0, src));
            _mm512_mask_storeu_ps(dst + 16, m1, _mm512_maskz_loadu_ps(m1, src + 16));
          }
        }
        continue;
      }
      // acc[pixel][channel] -> out[channel][pixel], then each run to its image row.
      for (int bp = 0; bp < 2; bp++)
        for (int bc = 0; bc < 2; bc++) {
          __m512i r[16];
          for (int k = 0; k < 16; k++) r[k] = _mm512_load_si512(acc + (bp * 16 + k) * 32 + bc * 16);
          Transpose16(r);
          for (int k = 0; k < 16; k++) _mm512_store_si512(out + (bc * 16 + k) * 32 + bp * 16, r[k]);
        }
      for (const Run& r : runs[i / 32]) {
        if (r.img >= count) continue;
        const __mmask16 m0 = Tail(r.len), m1 = Tail(r.len - 16);
        float* dst = y + (r.img * o + j) * hw + r.dst;
        for (int64_t ch = 0; ch < colsHere; ch++) {
          _mm512_mask_storeu_ps(dst + ch * hw, m0, _mm512_maskz_loadu_ps(m0, out + ch * 32 + r.src));
          if (m1) _mm512_mask_storeu_ps(dst + ch * hw + 16, m1, _mm512_maskz_loadu_ps(m1, out + ch * 32 + r.src + 16));
        }
      }
    }
  }
  _tile_release();
  return steps * 24;
}

// The grad output of `count` images (NCHW, or NHWC where channelsLast) on the output grid, zero
// outside the images: grid[channel][grid pixel], o rows of s.qr floats.
void GradOutputGrid(const float* gy, bool channelsLast, int64_t count, int64_t o, const Grid& s, float* grid) {
  std::fill_n(grid, o * s.qr, 0.f);
  const int64_t hw = s.hw();
  for (int64_t g = 0; g < count; g++)
    for (int64_t y = 0; y < s.h; y++) {
      float* row = grid + g * s.plane + y * s.wp;
      if (!channelsLast) {
        for (int64_t ch = 0; ch < o; ch++) std::memcpy(row + ch * s.qr, gy + (g * o + ch) * hw + y * s.w, s.w * 4);
        continue;
      }
      // 16 pixels x 16 channels at a time, transposed in registers.
      for (int64_t x0 = 0; x0 < s.w; x0 += 16) {
        const int64_t n = std::min<int64_t>(16, s.w - x0);
        for (int64_t ch0 = 0; ch0 < o; ch0 += 16) {
          __m512i r[16];
          for (int k = 0; k < 16; k++)
            r[k] = k < n ? _mm512_castps_si512(_mm512_loadu_ps(gy + ((g * s.h + y) * s.w + x0 + k) * o + ch0)) : _mm512_setzero_si512();
          Transpose16(r);  // r[k]: channel ch0 + k, pixels x0 .. x0 + 15
          for (int k = 0; k < 16; k++) _mm512_mask_storeu_ps(row + (ch0 + k) * s.qr + x0, Tail(n), _mm512_castsi512_ps(r[k]));
        }
      }
    }
}

// acc[tap][o][c] (+= where accumulate) the weight gradient of the grid's images: the grad output
// packed as the left operand (o rows, qr grid pixels) times the image's pixel pairs, shifted by the
// tap. Returns the tile products issued.
int64_t WeightTiles(const kshare_amx::Packed& gradOut, const PieceBuffer* const pairs[2], const Grid& s, int64_t o, float* acc,
                    bool accumulate) {
  ConfigureTiles();
  const int64_t kTiles = gradOut.colTiles, rowBytes = s.c * 4, ld = s.c * 4;
  const uint16_t* a[3] = {gradOut.piece(0), gradOut.piece(1), gradOut.piece(2)};
  const int64_t aNext = kTiles * 512;
  int64_t steps = 0;
  for (int64_t t = 0; t < 9; t++) {
    const int64_t shift = (t / 3) * s.wp + t % 3;
    const PieceBuffer& pp = *pairs[shift & 1];
    const uint16_t* b[3] = {pp.piece(0), pp.piece(1), pp.piece(2)};
    for (int64_t i = 0; i < o; i += 32) {
      const int64_t aRow = (i / 16) * kTiles * 512;
      for (int64_t j = 0; j < s.c; j += 32) {
        float* dst = acc + (t * o + i) * s.c + j;
        if (accumulate) {
          _tile_loadd(0, dst, ld);
          _tile_loadd(1, dst + 16, ld);
          _tile_loadd(2, dst + 16 * s.c, ld);
          _tile_loadd(3, dst + 16 * s.c + 16, ld);
        } else {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
        }
        for (int64_t kt = 0; kt < kTiles; kt++) {
          const int64_t oa = aRow + kt * 512, ob = (kt * 16 + (shift >> 1)) * 2 * s.c + j * 2;
          SixPieceProducts(
              [&](int p) {
                _tile_loadd(4, a[p] + oa, 64);
                _tile_loadd(5, a[p] + oa + aNext, 64);
              },
              [&](int p) {
                _tile_loadd(6, b[p] + ob, rowBytes);
                _tile_loadd(7, b[p] + ob + 32, rowBytes);
              });
        }
        steps += kTiles;
        _tile_stored(0, dst, ld);
        _tile_stored(1, dst + 16, ld);
        _tile_stored(2, dst + 16 * s.c, ld);
        _tile_stored(3, dst + 16 * s.c + 16, ld);
      }
    }
  }
  _tile_release();
  return steps * 24;
}

#pragma GCC pop_options
#endif  // __x86_64__

// Images a group: each thread packs a group's grid at once, so the weight's tiles (read once for
// every 32-pixel block) serve more pixels while the packed grid still fits in L2 (2 MiB a core
// here) beside the weight's column block. Throwaway harness, one thread, batch 32 (2026-12-06,
// 2-core Xeon with AMX): the forward against oneDNN's at::conv2d, grids of 1 / 2 images at 64
// channels 32 x 32 x1.89-2.06 / x2.04-2.09 (418 / 836 KiB packed), 2 / 4 at 128 x 16 x 16
// x1.41-1.54 / x1.65-1.71 (444 / 888 KiB), 4 / 8 at 256 x 8 x 8 x0.98-1.03 / x1.03-1.05 (498 / 995
// KiB); the weight gradient (which also packs the grid twice as pixel pairs, and the grad output)
// 1 / 2 images at 64 x1.77-1.80 / x1.26-1.29, 2 / 4 at 128 x1.28-1.45 / x1.00-1.01, 4 / 8 at 256
// x1.21-1.22 / x1.14-1.16. So about 1 MiB of packed grid for the forward, 512 KiB for the weight
// gradient.
constexpr int64_t kGroupBytesForward = 1 << 20, kGroupBytesWeight = 1 << 19;

// Images a group for `images` images a thread: about `bytes` of packed grid (three bfloat16 pieces
// of c channels), the thread's images in groups of nearly equal size.
int64_t GroupImages(int64_t images, int64_t c, int64_t h, int64_t w, int64_t bytes) {
  const int64_t most = std::max<int64_t>(1, bytes / ((h + 1) * (w + 1) * c * 6));
  const int64_t groups = (images + most - 1) / most;
  return std::max<int64_t>(1, (images + groups - 1) / groups);
}

thread_local PieceBuffer pixelBuffer, pairBuffers[2];

// The tile products since `start` in runtimeInfo()'s AMX counters; as for Gemm, the packs are not
// timed, so amxProductNs / amxTileProducts stays the tile unit's speed.
void Count(int64_t tileProducts, std::chrono::steady_clock::time_point start) {
  kshare_amx::RecordProducts(
      tileProducts, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count());
}

// y = x (n, c, h, w; y in x's layout, NCHW or NHWC) convolved with `weight` packed as ForwardTiles
// reads it (9c x o). False if an input value is not finite (y is then partly written).
bool Convolve(const float* x, bool channelsLast, int64_t n, int64_t c, int64_t h, int64_t w, const kshare_amx::Packed& weight, int64_t o,
              float* y) {
#if defined(__x86_64__)
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t group = GroupImages((n + threads - 1) / threads, c, h, w, kGroupBytesForward);
  const Grid s(c, h, w, group);
  const auto runs = Runs(s);
  std::atomic<bool> finite{true};
  const int64_t groups = (n + group - 1) / group;
  // With fewer groups than threads (batch-1 inference), each group's output channels are split
  // between threads too, each packing the group for itself: at batch 1 on 2 threads one thread a
  // group ran SE-ResNet's inference 15-35 % slower than oneDNN (throwaway timing, 2026-12-06).
  const int64_t blocks = (o + 31) / 32, parts = groups >= threads ? 1 : std::min(blocks, (threads + groups - 1) / groups);
  const int64_t partBlocks = (blocks + parts - 1) / parts;
  kshare::ParallelFor(0, groups * parts, 1, [&](int64_t b, int64_t e) {
    pixelBuffer.Reserve(s.len * c);
    for (int64_t task = b; task < e && finite.load(std::memory_order_relaxed); task++) {
      const int64_t gi = task / parts, part = task % parts, n0 = gi * group, count = std::min(group, n - n0);
      const int64_t j0 = part * partBlocks * 32, j1 = std::min(o, j0 + partBlocks * 32);
      if (j0 >= j1) continue;
      if (!PackPixels(x + n0 * c * h * w, channelsLast, count, s, pixelBuffer)) {
        finite = false;
        return;
      }
      const auto start = std::chrono::steady_clock::now();
      Count(ForwardTiles(pixelBuffer, weight, s, runs, count, o, j0, j1, channelsLast, y + n0 * o * h * w), start);
    }
  });
  return finite;
#else
  (void)x, (void)channelsLast, (void)n, (void)c, (void)h, (void)w, (void)weight, (void)o, (void)y;
  return false;  // Applies() is false off x86-64
#endif
}

// Each group reads the whole packed weight (9 C O x 6 bytes) from L3 or memory: at 256 x 256
// channels (3.4 MiB) the tile unit still gains a little (8 x 8 images: forward x0.99-1.17, forward +
// backward x1.11-1.28 in bench/results/conv3x3-ab.json), at 512 x 512 (13.5 MiB) it loses:
// (32,512,4,4) forward 24.9-25.3 ms against oneDNN's 11.5-12.3 (throwaway timing, 2026-12-06).
// src/tensor/ops/conv.ts routes by the same limit.
constexpr int64_t kMaxChannelProduct = 256 * 256;

bool Applies(const at::Tensor& input, const at::Tensor& weight) {
  if (!kshare_amx::Enabled() || !kshare::EnvSwitchOn("KSHARE_NATIVE_CONV3X3")) return false;
  if (input.dim() != 4 || weight.dim() != 4 || input.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat) return false;
  if (!input.device().is_cpu() || !weight.device().is_cpu()) return false;
  if (!input.is_contiguous() && !input.is_contiguous(at::MemoryFormat::ChannelsLast)) return false;
  const int64_t c = input.size(1), o = weight.size(0);
  return weight.size(1) == c && weight.size(2) == 3 && weight.size(3) == 3 && c % 32 == 0 && o % 32 == 0 && c > 0 && o > 0 &&
         c * o <= kMaxChannelProduct && input.size(0) > 0 && input.size(2) > 0 && input.size(3) > 0;
}

void Check(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) == input.size(1), op,
              ": weight must be [O, ", input.size(1), ", 3, 3] for an input of ", input.size(1), " channels, got ", weight.sizes());
}

at::Tensor Fallback(const at::Tensor& input, const at::Tensor& weight) { return at::conv2d(input, weight, {}, 1, 1); }

// The weight as the forward's right operand: row tap * C + c, column o = weight[o][c][tap].
std::shared_ptr<kshare_amx::Packed> PackForwardWeight(const at::Tensor& weight) {
  const at::Tensor t = weight.permute({2, 3, 1, 0}).contiguous();  // [ky][kx][c][o]
  auto packed = std::make_shared<kshare_amx::Packed>();
  kshare_amx::PackRight(t.data_ptr<float>(), 9 * weight.size(1), weight.size(0), weight.size(0), 1, packed.get());
  return packed;
}

// The input gradient's right operand: the weight flipped and transposed, row tap * O + o, column c
// = weight[o][c][8 - tap].
std::shared_ptr<kshare_amx::Packed> PackInputGradWeight(const at::Tensor& weight) {
  const at::Tensor t = weight.flip({2, 3}).permute({2, 3, 0, 1}).contiguous();  // [ky][kx][o][c]
  auto packed = std::make_shared<kshare_amx::Packed>();
  kshare_amx::PackRight(t.data_ptr<float>(), 9 * weight.size(0), weight.size(1), weight.size(1), 1, packed.get());
  return packed;
}

at::Tensor ForwardCpu(const at::Tensor& input, const at::Tensor& weight) {
  Check("kshare::conv3x3", input, weight);
  if (!Applies(input, weight)) return Fallback(input, weight);
  // Fewer channels-last images than threads (batch-1 inference, the layout `kshare predict` runs
  // SE-ResNet in): oneDNN's channels-last convolution splits one image between the threads better.
  // SE-ResNet d=2 shared at batch 1, 2 threads: 9.33-9.43 ms on AMX against 8.21-8.35 (NCHW, split
  // by output channels: 8.43-8.50 against 8.99-9.10; throwaway timing, 2026-12-06).
  if (kshare::ChannelsLastOnly(input) && input.size(0) < at::get_num_threads()) return Fallback(input, weight);
  const at::Tensor w = weight.contiguous();
  const auto packed = PackForwardWeight(w);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), wd = input.size(3), o = w.size(0);
  const bool channelsLast = kshare::ChannelsLastOnly(input);
  at::Tensor out = kshare::NewOutput({n, o, h, wd}, input.options(), kshare::LayoutOf(input));
  if (!packed->finite || !Convolve(input.data_ptr<float>(), channelsLast, n, c, h, wd, *packed, o, out.data_ptr<float>()))
    return Fallback(input, weight);
  return out;
}

// gW[o][c][tap] = sum over images of the grad output times the input shifted by the tap; images
// shared out between the threads in ImageShares order, the shares' sums added in order.
bool WeightGrad(const float* gy, const float* x, bool channelsLast, int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, float* gw) {
#if defined(__x86_64__)
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
  const int64_t group = GroupImages((n + shares - 1) / shares, c, h, w, kGroupBytesWeight), hw = h * w;
  const Grid s(c, h, w, group);
  std::vector<float> sums(shares * 9 * o * c);
  std::atomic<bool> finite{true};
  kshare::ParallelFor(0, shares, 1, [&](int64_t b, int64_t e) {
    thread_local kshare_amx::Packed gradOut;
    thread_local std::vector<float> grid;  // GradOutputGrid writes all of it
    grid.resize(o * s.qr);
    const int64_t pairs = s.len / 2 - 1;
    pixelBuffer.Reserve(s.len * c);
    pairBuffers[0].Reserve(pairs * 2 * c);
    pairBuffers[1].Reserve(pairs * 2 * c);
    const PieceBuffer* const pairPtrs[2] = {&pairBuffers[0], &pairBuffers[1]};
    for (int64_t p = b; p < e; p++) {
      const int64_t n0 = p * n / shares, n1 = (p + 1) * n / shares;
      for (int64_t g0 = n0; g0 < n1 && finite.load(std::memory_order_relaxed); g0 += group) {
        const int64_t count = std::min(group, n1 - g0);
        GradOutputGrid(gy + g0 * o * hw, channelsLast, count, o, s, grid.data());
        kshare_amx::PackLeft(grid.data(), o, s.qr, s.qr, 1, &gradOut);
        if (!gradOut.finite || !PackPixels(x + g0 * c * hw, channelsLast, count, s, pixelBuffer)) {
          finite = false;
          return;
        }
        PackPairs(pixelBuffer, s, 0, pairs, pairBuffers[0]);
        PackPairs(pixelBuffer, s, 1, pairs, pairBuffers[1]);
        const auto start = std::chrono::steady_clock::now();
        Count(WeightTiles(gradOut, pairPtrs, s, o, &sums[p * 9 * o * c], g0 != n0), start);
      }
    }
  });
  if (!finite) return false;
  // gw[o][c][tap] = sum over shares of sums[share][tap][o][c], added in share order.
  kshare::ParallelFor(0, o, 8, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ch++)
      for (int64_t ci = 0; ci < c; ci++)
        for (int64_t t = 0; t < 9; t++) {
          float v = sums[(t * o + ch) * c + ci];
          for (int64_t p = 1; p < shares; p++) v += sums[((p * 9 + t) * o + ch) * c + ci];
          gw[(ch * c + ci) * 9 + t] = v;
        }
  });
  return true;
#else
  (void)gy, (void)x, (void)channelsLast, (void)n, (void)c, (void)h, (void)w, (void)o, (void)gw;
  return false;  // Applies() is false off x86-64
#endif
}

std::tuple<at::Tensor, at::Tensor> BackwardCpu(const at::Tensor& gradOutput, const at::Tensor& input, const at::Tensor& weight,
                                               std::array<bool, 2> mask) {
  const char* op = "kshare::conv3x3_backward";
  Check(op, input, weight);
  TORCH_CHECK(gradOutput.dim() == 4 && gradOutput.size(0) == input.size(0) && gradOutput.size(1) == weight.size(0) &&
                  gradOutput.size(2) == input.size(2) && gradOutput.size(3) == input.size(3),
              op, ": grad_output must be [", input.size(0), ", ", weight.size(0), ", ", input.size(2), ", ", input.size(3), "], got ",
              gradOutput.sizes());
  auto fallback = [&] {
    auto r = at::convolution_backward(gradOutput, input, weight, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1,
                                      {mask[0], mask[1], false});
    return std::make_tuple(std::get<0>(r), std::get<1>(r));
  };
  if (!Applies(input, weight) || gradOutput.scalar_type() != at::kFloat || !gradOutput.device().is_cpu()) return fallback();
  // The grad output in the input's layout (libtorch's grad of a channels-last output may come NCHW).
  const bool channelsLast = kshare::ChannelsLastOnly(input);
  const at::Tensor w = weight.contiguous(), gy = gradOutput.contiguous(kshare::LayoutOf(input));
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), wd = input.size(3), o = w.size(0);
  at::Tensor gi, gw;
  if (mask[0]) {
    const auto packed = PackInputGradWeight(w);
    gi = kshare::NewOutput(input.sizes(), input.options(), kshare::LayoutOf(input));
    if (!packed->finite || !Convolve(gy.data_ptr<float>(), channelsLast, n, o, h, wd, *packed, c, gi.data_ptr<float>())) return fallback();
  }
  if (mask[1]) {
    gw = kshare::NewOutput(w.sizes(), w.options(), at::MemoryFormat::Contiguous);
    if (!WeightGrad(gy.data_ptr<float>(), input.data_ptr<float>(), channelsLast, n, c, h, wd, o, gw.data_ptr<float>())) return fallback();
    // The weight's own memory format, as libtorch returns it.
    if (weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) gw = gw.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return {gi, gw};
}

at::Tensor CallForward(const at::Tensor& input, const at::Tensor& weight) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("kshare::conv3x3", "").typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(input, weight);
}

std::tuple<at::Tensor, at::Tensor> CallBackward(const at::Tensor& gradOutput, const at::Tensor& input, const at::Tensor& weight,
                                                std::array<bool, 2> mask) {
  using Signature = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 2>);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("kshare::conv3x3_backward", "").typed<Signature>();
  return op.call(gradOutput, input, weight, mask);
}

class Conv3x3Function : public torch::autograd::Function<Conv3x3Function> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({input, weight});
    return CallForward(input, weight);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    at::Tensor gi, gw;
    if (c10::GradMode::is_enabled()) {
      // create_graph: libtorch's differentiable convolution backward, so higher derivatives work.
      std::tie(gi, gw, std::ignore) = at::convolution_backward(grad, saved[0], saved[1], c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false,
                                                               {0, 0}, 1, {mask[0], mask[1], false});
    } else {
      std::tie(gi, gw) = CallBackward(grad, saved[0], saved[1], mask);
    }
    return {gi, gw};
  }
};

at::Tensor ForwardAutograd(const at::Tensor& input, const at::Tensor& weight) { return Conv3x3Function::apply(input, weight); }

// Under CPU autocast the operator behaves like aten::conv2d does: bfloat16 through libtorch.
at::Tensor ForwardAutocastCpu(const at::Tensor& input, const at::Tensor& weight) {
  c10::impl::ExcludeDispatchKeyGuard noAutocast(c10::DispatchKey::AutocastCPU);
  const auto to = kshare::AutocastCpuDtype();
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(to, t, c10::DeviceType::CPU); };
  return at::conv2d(cast(input), cast(weight), {}, 1, 1);
}

}  // namespace

}  // namespace kshare_conv3

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def("conv3x3(Tensor input, Tensor weight) -> Tensor");
  m.def("conv3x3_backward(Tensor grad_output, Tensor input, Tensor weight, bool[2] output_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) {
  m.impl("conv3x3", kshare_conv3::ForwardCpu);
  m.impl("conv3x3_backward", kshare_conv3::BackwardCpu);
}

TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("conv3x3", kshare_conv3::ForwardAutograd); }

TORCH_LIBRARY_IMPL(kshare, AutocastCPU, m) { m.impl("conv3x3", kshare_conv3::ForwardAutocastCpu); }
