// Inner loops of the depthwise convolution (native/depthwise_conv.cc), included twice: once
// for the portable build and once under `#pragma GCC target("avx2,fma")`. The includer
// defines V (8 floats), load, store, fma and vzero for its instruction set.
// No include guard: it is meant to be included twice.
//
// Both kernels work on dense, zero-padded slices prepared by the caller, so they need no
// bounds checks: a slice is `rows` rows of vectors of 8 floats; "vector (y, v)" starts at
// y * rowStride + v * vecStride. For NCHW a vector is 8 neighbouring pixels of one channel
// (vecStride 8 in the slice, stepping one pixel along a row is 1 float); for channels-last it
// is one pixel's 8 channels (stepping one pixel is 8 floats). `tap` is the distance between
// horizontal taps (dilation x pixel step), `tapRow` between vertical taps (dilation x row stride).

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
    const float* wr = w + static_cast<int64_t>(i) * kw * 8;
    for (int j = 0; j < kw; j++) {
      const V wv = load(wr + j * 8);
      const float* p = row + j * tap;
    #pragma GCC unroll 8
  for (int b = 0; b < XB; b++) acc[b] = fma(wv, load(p + inOff[b]), acc[b]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < XB; b++) store(out + outOff[b], acc[b]);
}

// out(y, v) = bias + sum_{i,j} w[i][j] * in(y + i*dh, v shifted by j*dw); w is [kh][kw][8].
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
      inOff[n] = y * inRow + v * 8;
      outOff[n] = y * outRow + v * outVec;
      if (++n == kBlock) flush();
    }
  }
  flush();
}

// NI kernel rows x NJ horizontal taps at once (up to 12 independent FMA chains, each grad
// output load feeding NI * NJ FMAs): acc[ii][jj] += sum over the slice of
// g(y, v) * in(y + ii*dh, v + jj*dw).
template <int NI, int NJ>
static inline void CorrelateTaps(const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                                 int64_t vecsPerRow, int64_t tapRow, int64_t tap, float* acc, int64_t accRow) {
  V a[NI][NJ];
#pragma GCC unroll 2
  for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
    for (int jj = 0; jj < NJ; jj++) a[ii][jj] = vzero();
  for (int64_t y = 0; y < rows; y++) {
    const float* r = in + y * inRow;
    const float* gr = g + y * gRow;
    for (int64_t v = 0; v < vecsPerRow; v++) {
      const V gv = load(gr + v * gVec);
      const float* p = r + v * 8;
#pragma GCC unroll 2
      for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
        for (int jj = 0; jj < NJ; jj++) a[ii][jj] = fma(gv, load(p + ii * tapRow + jj * tap), a[ii][jj]);
    }
  }
#pragma GCC unroll 2
  for (int ii = 0; ii < NI; ii++)
#pragma GCC unroll 8
    for (int jj = 0; jj < NJ; jj++) store(acc + ii * accRow + jj * 8, load(acc + ii * accRow + jj * 8) + a[ii][jj]);
}

template <int NI>
static inline void CorrelateRows(int nj, const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                                 int64_t vecsPerRow, int64_t tapRow, int64_t tap, float* acc, int64_t accRow) {
  switch (nj) {
    case 6: CorrelateTaps<NI, 6>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
    case 5: CorrelateTaps<NI, 5>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
    case 4: CorrelateTaps<NI, 4>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
    case 3: CorrelateTaps<NI, 3>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
    case 2: CorrelateTaps<NI, 2>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
    default: CorrelateTaps<NI, 1>(in, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, acc, accRow); break;
  }
}

// Weight-gradient correlation: acc[i][j][8] += sum_{y,v} g(y, v) * in(y + i*dh, v shifted by j*dw).
static void Correlate(const float* in, int64_t inRow, const float* g, int64_t gRow, int64_t gVec, int64_t rows,
                      int64_t vecsPerRow, int kh, int kw, int64_t tapRow, int64_t tap, float* acc) {
  // Two kernel rows at a time, taps in balanced chunks of at most 6 (k = 9 -> 5 + 4, k = 15 -> 5 + 5 + 5).
  const int chunks = (kw + 5) / 6;
  const int per = (kw + chunks - 1) / chunks;
  const int64_t accRow = static_cast<int64_t>(kw) * 8;
  for (int i = 0; i < kh; i += 2) {
    for (int j0 = 0; j0 < kw; j0 += per) {
      const int nj = kw - j0 < per ? kw - j0 : per;
      const float* base = in + i * tapRow + j0 * tap;
      float* ac = acc + (static_cast<int64_t>(i) * kw + j0) * 8;
      if (i + 1 < kh) CorrelateRows<2>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow);
      else CorrelateRows<1>(nj, base, inRow, g, gRow, gVec, rows, vecsPerRow, tapRow, tap, ac, accRow);
    }
  }
}
