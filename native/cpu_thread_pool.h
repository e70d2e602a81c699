// kshare's own thread pool for its CPU kernels (cpu_thread_pool.cc): kshare::ParallelFor is
// at::parallel_for's drop-in replacement (the same split of the range into one chunk a thread),
// run on threads that spin for a while after each call instead of libgomp's, which sleep after
// GOMP_SPINCOUNT pauses and cost a wake-up at every operator call.
#pragma once
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdint>
#include <functional>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kshare {

// One pause of a spin-wait loop (PAUSE on x86, YIELD on Arm).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How long the pool's idle workers and its caller (cpu_thread_pool.cc) spin for the next piece of
// work before they sleep: KSHARE_CPU_SPIN_US (whole microseconds, read by the calling thread at
// every parallel call, as KSHARE_CPU_POOL; src/tensor/native.ts checks it), default
// kDefaultSpinUs, measured in cpu_thread_pool.cc.
constexpr int64_t kDefaultSpinUs = 50;
std::chrono::microseconds PoolSpinLimit();

// Spins until done() returns true (true), or for at most `limit` (false: the caller then sleeps
// until it is woken).
template <class Done>
bool SpinUntil(const Done& done, std::chrono::microseconds limit) {
  const auto start = std::chrono::steady_clock::now();
  for (unsigned i = 1; !done(); i++) {
    CpuRelax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > limit) return false;
  }
  return true;
}

// f(b, e) over [begin, end) in chunks, as at::parallel_for(begin, end, grain, f) would run it
// (at::get_num_threads() chunks at most, none smaller than grain). Inside a chunk,
// at::get_num_threads() is 1, so nested parallel loops and oneDNN's sgemm run on the calling
// thread. Runs on the calling thread alone where at::parallel_for would, inside another
// ParallelFor or an OpenMP region, or while another thread uses the pool.
// KSHARE_CPU_POOL=0 (read at every call) runs at::parallel_for instead. An exception thrown in a
// chunk is rethrown on the calling thread once every chunk is done (KSHARE_NATIVE_FAIL_JOBS=1, a
// test hook, makes the last chunk of every loop throw).
void ParallelFor(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// The pool's worker threads now (0 before its first parallel call; at::get_num_threads() - 1
// after one), and the parallel calls it has run: for runtimeInfo() and the tests.
int64_t CpuPoolWorkers();
int64_t CpuPoolJobs();
// Parallel calls that found a worker asleep (it had spun for PoolSpinLimit() since its last chunk)
// and woke it.
int64_t CpuPoolWakes();
// Workers the pool found on the calling thread's CPU or another worker's after a call and moved
// to the CPUs nobody else was on (KSHARE_CPU_SPREAD=0 turns this off).
int64_t CpuPoolSpreads();
// Parallel calls that found another thread using the pool and ran on libgomp's threads instead
// (two JavaScript threads, e.g. worker_threads, running kernels at once).
int64_t CpuPoolFallbacks();

}  // namespace kshare
