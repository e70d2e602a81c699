// 4-float vectors (GCC vector extensions: SSE2 on x86-64, NEON on arm64) for the memory-bound
// masked loops of batch_norm_relu.cc and channel_scale_add.cc, which GCC leaves scalar and
// branchy when written with a ?: or a bool cast.
#pragma once

namespace kshare::vec4 {

typedef float V4 __attribute__((vector_size(16)));
typedef int I4 __attribute__((vector_size(16)));
inline V4 Load4(const float* p) {
  V4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void Store4(float* p, V4 v) { __builtin_memcpy(p, &v, sizeof v); }
// g where y > 0, else 0 (ReLU's gradient mask).
inline V4 WherePositive(V4 g, V4 y) {
  const I4 m = y > V4{0, 0, 0, 0};
  return reinterpret_cast<V4>(reinterpret_cast<I4>(g) & m);
}
inline V4 Splat(float v) { return V4{v, v, v, v}; }
inline float Sum(V4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

}  // namespace kshare::vec4
