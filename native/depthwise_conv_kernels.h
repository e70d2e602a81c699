// Inner loops of the depthwise convolution (native/depthwise_conv.cc), included once per
// instruction set: portable, AVX2/FMA and AVX-512. The includer defines V (a vector of kLanes
// floats: 8, or 16 for AVX-512), kLanes, kMaxAcc (how many accumulators a weight-gradient pass
// may keep in registers: 12 of AVX2's 16, 25 of AVX-512's 32), load, store, add, fma, vzero and
// bcast (one float in every lane);
// KSHARE_DW_CORRELATE_ONLY leaves out the forward (the AVX-512 build only correlates).
// No include guard: it is meant to be included several times.
//
// Both kernels work on dense, zero-padded slices prepared by the caller, so they need no
// bounds checks: a slice is `rows` rows of vectors of kLanes floats; "vector (y, v)" starts at
// y * rowStride + v * vecStride. For NCHW a vector is kLanes neighbouring pixels of one channel
// (vecStride kLanes in the slice, stepping one pixel along a row is 1 float); for channels-last
// it is one pixel's kLanes channels (stepping one pixel is kLanes floats). `tap` is the distance
// between horizontal taps (dilation x pixel step), `tapRow` between vertical taps (dilation x
// row stride).

// dst[i] += a[i] for i < n: a gradient added into the grad input plane just written, while it
// is in L1 (the ConvMixer residual's gradient, native/conv_gelu_bn.cc).
static inline void AddInto(float* dst, const float* a, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, add(load(dst + i), load(a + i)));
  for (; i < n; i++) dst[i] += a[i];
}

#ifndef KSHARE_DW_CORRELATE_ONLY
// Forward block: XB output vectors at once (independent FMA chains; each input load feeds one
// FMA and each weight load XB of them).
template <int XB>
static inline void ForwardBlock(const float* in, const int64_t* inOff, float* out, const int64_t* outOff,
                                const float* w, const V& bias, int kh, int kw, int64_t tapRow, int64_t tap) {
  V acc[XB];
#pragma GCC unroll 8
  for (int b = 0; b < XB; b++) acc[b] = bias;
  for (int i = 0; i < kh; i++) {
    const float* row = in + i * tapRow;
    const float* wr = w + static_cast<int64_t>(i) * kw * kLanes;
    for (int j = 0; j < kw; j++) {
      const V wv = load(wr + j * kLanes);
      const float* p = row + j * tap;
#pragma GCC unroll 8
      for (int b = 0; b < XB; b++) acc[b] = fma(wv, load(p + inOff[b]), acc[b]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < XB; b++) store(out + outOff[b], acc[b]);
}

// out(y, v) = bias + sum_{i,j} w[i][j] * in(y + i*dh, v shifted by j*dw); w is [kh][kw][kLanes].
static void Forward(const float* in, int64_t inRow, float* out, int64_t outRow, int64_t outVec, int64_t rows,
                    int64_t vecsPerRow, const float* w, const float* bias8, int kh, int kw, int64_t tapRow, int64_t tap) {
  constexpr int kBlock = 8;
  const V bias = load(bias8);
  int64_t inOff[kBlock], outOff[kBlock];
  int n = 0;
  auto flush = [&]() {
    switch (n) {
      case 8: ForwardBlock<8>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 7: ForwardBlock<7>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 6: ForwardBlock<6>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 5: ForwardBlock<5>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 4: ForwardBlock<4>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 3: ForwardBlock<3>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 2: ForwardBlock<2>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      case 1: ForwardBlock<1>(in, inOff, out, outOff, w, bias, kh, kw, tapRow, tap); break;
      default: break;
    }
    n = 0;
  };
  // Blocks run across row ends, so narrow planes (16 pixels = 2 vectors a row) still fill them.
  for (int64_t y = 0; y < rows; y++) {
    for (int64_t v = 0; v < vecsPerRow; v++) {
      inOff[n] = y * inRow + v * kLanes;
      outOff[n] = y * outRow + v * outVec;
      if (++n == kBlock) flush();
    }
  }
  flush();
}
#endif  // KSHARE_DW_CORRELATE_ONLY

// Output rows a block of the NCHW plane kernel (PlaneForwardK below).
static constexpr int PlaneForwardRows(int k) { return k <= 9 ? 8 : 4; }

// NB blocks of R output rows each, R rows apart, for one vector column, in lockstep: NB times the
// independent accumulator chains (with one block, an input row reaches at most K of its R
// accumulators, so at K = 5 no more than 5 chains run at once), each weight loaded once for all
// blocks. Every accumulator takes its terms in the same (iy, j) order as with one block, so the
// sums are the same bit for bit. rowsLast: how many rows of the last block to store.
template <int K, int R, int NB>
static inline void PlaneBlocks(const float* base, int64_t padRow, float* o, int64_t outRow, int rowsLast, const float* w, float bias) {
  const V b = bcast(bias);
  V acc[NB][R];
#pragma GCC unroll 4
  for (int q = 0; q < NB; q++)
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) acc[q][r] = b;
#pragma GCC unroll 32
  for (int iy = 0; iy < R + K - 1; iy++) {
#pragma GCC unroll 16
    for (int j = 0; j < K; j++) {
      V x[NB];
#pragma GCC unroll 4
      for (int q = 0; q < NB; q++) x[q] = load(base + (q * R + iy) * padRow + j);
#pragma GCC unroll 16
      for (int r = 0; r < R; r++) {
        const int i = iy - r;
        if (i >= 0 && i < K) {
          const V wv = bcast(w[i * K + j]);
#pragma GCC unroll 4
          for (int q = 0; q < NB; q++) acc[q][r] = fma(wv, x[q], acc[q][r]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q + 1 < NB; q++)
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) store(o + (q * R + r) * outRow, acc[q][r]);
  if (rowsLast == R) {
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) store(o + ((NB - 1) * R + r) * outRow, acc[NB - 1][r]);
  } else {
    for (int r = 0; r < rowsLast; r++) store(o + ((NB - 1) * R + r) * outRow, acc[NB - 1][r]);
  }
}

// NCHW forward of one plane for a K x K kernel, dilation 1 (K known at compile time):
// out(y, x) = bias + sum_{i,j} w[i*K + j] * pad[(y + i) * padRow + x + j], for y < h and x in
// `vecs` vectors of kLanes pixels. R output rows are computed at once: each shifted input vector
// is loaded once and feeds up to R accumulators (one per output row it reaches), with the weight
// broadcast from memory, so a tap costs about 1 + 1/R loads instead of the generic Forward's 2.
// With AVX-512's 32 registers and K <= 5 (at most 5 of a block's 8 chains busy at once) two such
// blocks run in lockstep (PlaneBlocks), the same numbers: 8,192 16 x 16 k5 planes 0.745-0.80 ms
// against 0.85-0.91 with the padded plane in cache (throwaway harness); the (32,64,16,16) k5 NCHW
// forward 0.344-0.368 ms against 0.390-0.402 (`node dist/bench/depthwise.js --only "forward (32"
// --rounds 5`, two builds in turn); at k9 two blocks were slower (4.08 against 3.45 ms at
// (8,256,32,32): the 81 weights' broadcasts spilled), so larger kernels keep one.
// `pad` holds the zero-padded plane with at least roundup(h, R) + K - 1 rows (rows past h + K - 1
// zero: the last block runs past h and its extra rows are not stored) and padRow >= vecs *
// kLanes + K - 1.
// PlaneForwardK's blocks one at a time from row y0, and the paired loop below, each its own
// function: in one function GCC hoisted the single loop's weight broadcasts above the paired loop,
// whose registers they then took (k5 1.4x slower).
template <int K>
__attribute__((noinline)) static void PlaneSingleBlocks(const float* pad, int64_t padRow, float* out, int64_t outRow, int64_t h,
                                                        int64_t vecs, const float* w, float bias, int64_t y0) {
  constexpr int R = PlaneForwardRows(K);
  for (; y0 < h; y0 += R) {
    const int rows = h - y0 < R ? static_cast<int>(h - y0) : R;
    for (int64_t v = 0; v < vecs; v++)
      PlaneBlocks<K, R, 1>(pad + y0 * padRow + v * kLanes, padRow, out + y0 * outRow + v * kLanes, outRow, rows, w, bias);
  }
}

// Pairs of blocks while at least one row of a second block is left; returns the first row not done.
template <int K>
__attribute__((noinline)) static int64_t PlanePairedBlocks(const float* pad, int64_t padRow, float* out, int64_t outRow, int64_t h,
                                                           int64_t vecs, const float* w, float bias) {
  constexpr int R = PlaneForwardRows(K);
  int64_t y0 = 0;
  for (; y0 + R < h; y0 += 2 * R) {
    const int64_t left = h - y0 - R;
    const int rowsLast = left < R ? static_cast<int>(left) : R;
    for (int64_t v = 0; v < vecs; v++)
      PlaneBlocks<K, R, 2>(pad + y0 * padRow + v * kLanes, padRow, out + y0 * outRow + v * kLanes, outRow, rowsLast, w, bias);
  }
  return y0;
}

template <int K>
static void PlaneForwardK(const float* pad, int64_t padRow, float* out, int64_t outRow, int64_t h, int64_t vecs,
                          const float* w, float bias) {
  int64_t y0 = 0;
  if constexpr (kLanes == 16 && K <= 5) y0 = PlanePairedBlocks<K>(pad, padRow, out, outRow, h, vecs, w, bias);
  if (y0 < h) PlaneSingleBlocks<K>(pad, padRow, out, outRow, h, vecs, w, bias, y0);
}

typedef void (*PlaneForwardFn)(const float*, int64_t, float*, int64_t, int64_t, int64_t, const float*, float);
// The plane kernel for a K x K kernel, or nullptr when K has none (even, or above 15).
static PlaneForwardFn PlaneForward(int k) {
  switch (k) {
    case 3: return PlaneForwardK<3>;
    case 5: return PlaneForwardK<5>;
    case 7: return PlaneForwardK<7>;
    case 9: return PlaneForwardK<9>;
    case 11: return PlaneForwardK<11>;
    case 13: return PlaneForwardK<13>;
    case 15: return PlaneForwardK<15>;
    default: return nullptr;
  }
}

// Vector registers of this instruction set (x86-64: 16 with AVX2, 32 with AVX-512).
constexpr int kRegs = kLanes == 16 ? 32 : 16;

// Grad output rows CorrelateBlock takes at once with VB vectors a row: what the registers hold
// beside the NI * NJ accumulators, one input vector and the bias sum, at most 4 (1: no block).
template <int NI, int NJ, int VB>
constexpr int CorrelateBlockRows() {
  const int rows = (kRegs - 2 - NI * NJ) / VB;
  return rows < 1 ? 1 : rows > 4 ? 4 : rows;
}

// YB grad output rows [y0, y0 + YB) of VB vectors each, at dilation 1 (kernel row ii reads input
// row y + ii): input row y0 + t is loaded once a tap and feeds every (grad row b, kernel row ii)
// with b + ii = t, so a row's 5 (k5) shifted loads serve up to 5 rows' multiply-adds instead of
// one. Each accumulator still takes its terms in (y, v) order, so the sums are CorrelateTaps's
// own, bit for bit.
template <int NI, int NJ, int TAP, int YB, int VB>
static inline void CorrelateBlock(V (&a)[NI][NJ], V& gs, bool withSum, const float* in, int64_t inRow, const float* g,
                                  int64_t gRow, int64_t gVec, int64_t y0, int64_t tapRuntime) {
  const int64_t tap = TAP > 0 ? TAP : tapRuntime;
  V gv[YB][VB];
#pragma GCC unroll 8
  for (int b = 0; b < YB; b++)
#pragma GCC unroll 2
    for (int v = 0; v < VB; v++) {
      gv[b][v] = load(g + (y0 + b) * gRow + v * gVec);
      if (withSum) gs = add(gs, gv[b][v]);
    }
#pragma GCC unroll 16
  for (int t = 0; t < YB + NI - 1; t++) {
    const float* row = in + (y0 + t) * inRow;
#pragma GCC unroll 2
    for (int v = 0; v < VB; v++)
#pragma GCC unroll 8
      for (int jj = 0; jj < NJ; jj++) {
        const V x = load(row + v * kLanes + jj * tap);
#pragma GCC unroll 8
        for (int b = 0; b < YB; b++) {
          const int ii = t - b;
          if (ii >= 0 && ii < NI) a[ii][jj] = fma(gv[b][v], x, a[ii][jj]);
        }
      }
  }
}

// All rows in CorrelateBlock's blocks of YB, the rest one at a time.
template <int NI, int NJ, int TAP, int VB>
static inline void CorrelateRowBlocks(V (&a)[NI][NJ], V& gs, bool withSum, const float* in, int64_t inRow, const float* g,
                                      int64_t gRow, int64_t gVec, int64_t rows, int64_t tap) {
  constexpr int YB = CorrelateBlockRows<NI, NJ, VB>();
  int64_t y = 0;
  for (; y + YB <= rows; y += YB) CorrelateBlock<NI, NJ, TAP, YB, VB>(a, gs, withSum, in, inRow, g, gRow, gVec, y, tap);
  for (; y < rows; y++) CorrelateBlock<NI, NJ, TAP, 1, VB>(a, gs, withSum, in, inRow, g, gRow, gVec, y, tap);
}

// NI kernel rows x NJ horizontal taps at once (NI * NJ <= kMaxAcc independent FMA chains, each
// grad output load feeding all of them): acc[ii][jj] += sum over the slice of
// g(y, v) * in(y + ii*dh, v + jj*dw). With `gsum`, also gsum[lane] += the sum of g's vectors
// (the bias gradient, at no extra load). TAP > 0 is the tap distance known at compile time
// (dilation 1), so each load addresses one of NI row pointers plus a constant: with 25 taps a
// runtime distance needs more offset registers than x86 has, and the spills cost ~2x.
// At vertical dilation 1 with one or two vectors a row (NCHW planes up to 2 * kLanes wide),
// CorrelateRowBlocks shares each input load between grad rows: ~1.3x faster over a
// ConvMixer-256/8 weight gradient's 8,192 16 x 16 k5 planes with AVX-512 (throwaway harness,
// bench/cpu-kernels-notes.md, eighteenth session), the same sums.
template <int NI, int NJ, int TAP>
static inline void CorrelateTaps(const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                                 int64_t vecsPerRow, int64_t tapRow, int64_t tapRuntime, float* acc, int64_t accRow,
                                 float* gsum) {
  const int64_t tap = TAP > 0 ? TAP : tapRuntime;
  V a[NI][NJ];
  V gs = vzero();
#pragma GCC unroll 8
  for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
    for (int jj = 0; jj < NJ; jj++) a[ii][jj] = vzero();
  if (tapRow == inRow && vecsPerRow == 1 && CorrelateBlockRows<NI, NJ, 1>() > 1) {
    CorrelateRowBlocks<NI, NJ, TAP, 1>(a, gs, gsum != nullptr, in, inRow, g, gRow, gVec, rows, tap);
  } else if (tapRow == inRow && vecsPerRow == 2 && CorrelateBlockRows<NI, NJ, 2>() > 1) {
    CorrelateRowBlocks<NI, NJ, TAP, 2>(a, gs, gsum != nullptr, in, inRow, g, gRow, gVec, rows, tap);
  } else {
    for (int64_t y = 0; y < rows; y++) {
      const float* rp[NI];
#pragma GCC unroll 8
      for (int ii = 0; ii < NI; ii++) rp[ii] = in + y * inRow + ii * tapRow;
      const float* gr = g + y * gRow;
      for (int64_t v = 0; v < vecsPerRow; v++) {
        const V gv = load(gr + v * gVec);
        if (gsum) gs = add(gs, gv);
#pragma GCC unroll 8
        for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
          for (int jj = 0; jj < NJ; jj++) a[ii][jj] = fma(gv, load(rp[ii] + v * kLanes + jj * tap), a[ii][jj]);
      }
    }
  }
#pragma GCC unroll 8
  for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
    for (int jj = 0; jj < NJ; jj++) store(acc + ii * accRow + jj * kLanes, add(load(acc + ii * accRow + jj * kLanes), a[ii][jj]));
  if (gsum) store(gsum, add(load(gsum), gs));
}

template <int NI, int NJ>
static inline void CorrelateTapsAnyTap(const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                                       int64_t vecsPerRow, int64_t tapRow, int64_t tap, float* acc, int64_t accRow, float* gsum) {
  // Dilation 1: NCHW taps are 1 float apart, channels-last taps one pixel (kLanes floats). Not
  // the latter for AVX2: GCC then turns the taps of neighbouring pixels into a sliding window of
  // registers that spills with 16 of them (k9 channels-last 1.5x slower, perf annotate).
  if (tap == 1) CorrelateTaps<NI, NJ, 1>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum);
  else if (tap == kLanes && kLanes == 16) CorrelateTaps<NI, NJ, kLanes>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum);
  else CorrelateTaps<NI, NJ, 0>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum);
}

template <int NI>
static inline void CorrelateRows(int nj, const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                                 int64_t vecsPerRow, int64_t tapRow, int64_t tap, float* acc, int64_t accRow, float* gsum) {
  switch (nj) {
    case 6: CorrelateTapsAnyTap<NI, 6>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
    case 5: CorrelateTapsAnyTap<NI, 5>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
    case 4: CorrelateTapsAnyTap<NI, 4>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
    case 3: CorrelateTapsAnyTap<NI, 3>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
    case 2: CorrelateTapsAnyTap<NI, 2>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
    default: CorrelateTapsAnyTap<NI, 1>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow, gsum); break;
  }
}

static inline int CorrelateChunks(int kw) { return (kw + 5) / 6; }
static inline int CorrelateRowsPerPass(int kw) {
  const int chunks = CorrelateChunks(kw), per = (kw + chunks - 1) / chunks;
  return std::max(1, std::min(5, kMaxAcc / per));
}
// How many times Correlate reads grad output.
static int CorrelatePasses(int kh, int kw) {
  const int r = CorrelateRowsPerPass(kw);
  return (kh + r - 1) / r * CorrelateChunks(kw);
}

// Weight-gradient correlation: acc[i][j][kLanes] += sum_{y,v} g(y, v) * in(y + i*dh, v shifted
// by j*dw), and gsum[kLanes] += sum_{y,v} g(y, v) when gsum is not null.
static void Correlate(const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                      int64_t vecsPerRow, int kh, int kw, int64_t tapRow, int64_t tap, float* acc, float* gsum) {
  // Taps in balanced chunks of at most 6 (k = 9 -> 5 + 4, k = 15 -> 5 + 5 + 5), and as many
  // kernel rows a pass as the registers hold (AVX2, k5: 2 rows; AVX-512, k5: all 5), so grad
  // output is read once per pass.
  const int chunks = CorrelateChunks(kw), per = (kw + chunks - 1) / chunks, rowsPerPass = CorrelateRowsPerPass(kw);
  const int64_t accRow = static_cast<int64_t>(kw) * kLanes;
  for (int i = 0; i < kh; i += rowsPerPass) {
    const int ni = std::min(rowsPerPass, kh - i);
    for (int j0 = 0; j0 < kw; j0 += per) {
      const int nj = kw - j0 < per ? kw - j0 : per;
      const float* base = in + i * tapRow + j0 * tap;
      float* ac = acc + (static_cast<int64_t>(i) * kw + j0) * kLanes;
      float* gs = i == 0 && j0 == 0 ? gsum : nullptr;
      switch (ni) {
        case 5: CorrelateRows<5>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow, gs); break;
        case 4: CorrelateRows<4>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow, gs); break;
        case 3: CorrelateRows<3>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow, gs); break;
        case 2: CorrelateRows<2>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow, gs); break;
        default: CorrelateRows<1>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow, gs); break;
      }
    }
  }
}
