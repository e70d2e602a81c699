// Float32 matrix products on Intel AMX (amx_gemm.cc): each float32 operand is split into three
// bfloat16 pieces whose sum is the value, and the six piece products that matter are summed in
// float32 tiles, so the result is as accurate as a float32 sgemm (bfloat16 alone would not be).
// Used by kshare's 1x1 convolution (pointwise_conv.cc) where Enabled(); the tile layout and the
// counters also serve its 3x3 convolution (amx_conv3x3.cc).
#pragma once

#include <cstdint>
#include <memory>

namespace kshare_amx {

// The CPU has AMX-BF16, the kernel lets this process use the tile registers, and neither
// KSHARE_NATIVE_AMX=0 nor a KSHARE_NATIVE_ISA cap (avx2, generic) turns it off (read at every call).
bool Enabled();

// AMX product calls so far in this process, Gemm's and the 3x3 convolution's (tests check the
// routes with it).
int64_t Products();

// Tile products (bfloat16 16 x 16 x 32 dot-product instructions) those calls issued, and the
// nanoseconds spent in them (wall time, summed over threads): their ratio is the tile unit's speed
// where the products ran, which another guest on the same core can cut several times over
// (bench/cpu-kernels.ts reports it for each row; bench/cpu-kernels-notes.md, twenty-fifth session).
int64_t TileProducts();
int64_t ProductNanoseconds();

// The CPU and OS allow AMX (Enabled() without the environment switches): the condition for
// src/tensor's routes to AMX-only operators, which check Enabled() again at every call.
bool Supported();

// Counts one call of another AMX product (amx_conv3x3.cc) in the three counters above.
void RecordProducts(int64_t tileProducts, int64_t nanoseconds);

// A matrix in AMX tile layout, split into three bfloat16 pieces (hi, mid, lo). As the left
// operand (m x k): 16 x 32 tiles, [row tile][k tile][16][32]; as the right operand (k x n): VNNI
// tiles, [k tile][column tile][16 k pairs][16 columns][2]. Rows and columns are padded with
// zeros to multiples of 32. Reused between calls: it grows, never shrinks.
// Three pieces of bfloat16 one after another, 64-byte aligned, in storage that grows, never shrinks
// (reused between calls): Packed's, and the 3x3 convolution's packed grids (amx_conv3x3.cc).
struct PieceStorage {
  int64_t pieceElems = 0;  // bfloat16 elements in one piece (a multiple of 32)
  uint16_t* base = nullptr;
  std::unique_ptr<uint16_t[]> storage;
  int64_t capacity = 0;
  // Room for pieces of `elems` elements each (rounded up to 32); the contents are not kept.
  void Reserve(int64_t elems);
  uint16_t* piece(int p) const { return base + p * pieceElems; }
};

struct Packed : PieceStorage {
  int64_t rows = 0, cols = 0;        // logical size
  int64_t rowTiles = 0, colTiles = 0;  // tiles: left, 16-row tiles by 32-column tiles; right, 32-row by 16-column
  bool finite = true;  // no infinity or NaN: otherwise Gemm would give NaN for inf * (a zero piece)
  const uint16_t* piece(int p) const { return PieceStorage::piece(p); }
};

// a(i, j) = src[i * rowStride + j * colStride], i < rows, j < cols.
void PackLeft(const float* src, int64_t rows, int64_t cols, int64_t rowStride, int64_t colStride, Packed* out);
void PackRight(const float* src, int64_t rows, int64_t cols, int64_t rowStride, int64_t colStride, Packed* out);

// Memory the caller reads next (from DRAM otherwise), for Gemm to bring toward L2 a few lines at a
// time while the tile unit works.
struct Prefetch {
  const void* data = nullptr;
  int64_t bytes = 0;
};

// Callers check both operands' `finite` and use a float32 sgemm where one is false.
// Rows [rowBegin, rowEnd) of c (left.rows x right.cols, row stride ldc) = left * right + beta * c,
// beta 0 or 1; rowBegin a multiple of 32. left.cols must equal right.rows.
void Gemm(const Packed& left, const Packed& right, float* c, int64_t ldc, float beta, int64_t rowBegin, int64_t rowEnd,
          Prefetch prefetch = {});

// dst[c * rows + r] = parts[0][r * cols + c] + parts[1][r * cols + c] + ... (added in that order),
// for rows [rowBegin, rowEnd) of the parts, rowBegin a multiple of 16: the transposed sum of
// per-thread partial products (pointwise_conv.cc's weight gradient). Uses AVX-512 (every CPU
// where Enabled() holds has it).
void TransposeSum(const float* const* parts, int64_t count, int64_t rows, int64_t cols, float* dst, int64_t rowBegin, int64_t rowEnd);

}  // namespace kshare_amx
