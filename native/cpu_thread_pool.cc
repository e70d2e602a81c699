// kshare's own thread pool for its CPU kernels: see cpu_thread_pool.h.
//
// Why: libtorch's intra-op threads are libgomp's, and kshare sets GOMP_SPINCOUNT=1000 (a short
// spin, measured to suit a busy machine). Where PAUSE takes ~9 ns that is ~9 us, shorter than the
// JavaScript and dispatch between two operator calls, so the worker sleeps between calls and every
// parallel loop of the next call first waits ~70-85 us for it to wake (bench/cpu-kernels-notes.md,
// seventh and eighth sessions). Here the workers spin for up to 50 us of wall time
// (KSHARE_CPU_SPIN_US) after each call (then sleep on a condition variable), so consecutive
// kernel calls find them awake, and the thread that calls waits for the others the same way
// instead of sleeping at libgomp's join. libtorch's own operators keep libgomp's threads.
//
// Measured speed (2-core Intel Xeon, 2 threads, against the same kernels on libgomp's threads):
// in one process (`node dist/bench/route-ab.js --only pool --threads 2 --rounds 3`,
// bench/results/pool-ab.json) training steps at batch 32 ConvMixer-64/4 shared 13.30 against
// 15.59 ms (x1.17), ConvMixer-256/8 shared x1.02, SE-ResNet d=2 shared x1.01, ConvMixer-256/16
// batch-1 inference x1.00. In fresh processes (`node dist/bench/wait-policy.js --rounds 3`,
// bench/results/wait-policy.json), the 64/4 step: quiet 13.93 against 16.52 ms, beside one busy
// process 28.02 against 28.01, two such jobs at once on the 2 cores 32.00 against 29.98 (the cost
// of the spin when the machine is oversubscribed; KSHARE_CPU_POOL=0 avoids it).
#include "cpu_thread_pool.h"

#include "cpu_kernel_common.h"

#include <c10/util/Exception.h>
#include <omp.h>

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>


namespace {

thread_local bool t_inPool = false;  // inside a chunk: nested loops run on the calling thread

// kDefaultSpinUs (cpu_thread_pool.h) for the pool: `node dist/bench/wait-policy.js --rounds 2` (2
// threads, the 64/4 training step, pool / libgomp's threads, ms; throwaway builds for the other
// limits): 15 us quiet 14.25 / 16.17, two jobs at once 31.46 / 29.00; 30 us 13.83 / 15.44,
// 31.98 / 29.58; 50 us 13.53 / 15.73, 32.00 / 28.02. Beside one or two busy processes and for
// batch-1 inference, equal within noise at each limit. Longer (KSHARE_CPU_SPIN_US=500, thirteenth
// session, bench/cpu-kernels-notes.md): 2-thread steps 2-6 % faster on a quiet machine
// (bench/results/spin-ab.json), but the 64/4 step twice as slow beside one busy process, since
// a spinning worker takes the core the calling thread needs. Backing off when a spinning thread
// found it had lost its core was tried and not kept: on this virtual machine such gaps also come
// from the host, and the detection missed real contention or fired on a quiet machine.
using kshare::SpinUntil;

// KSHARE_CPU_SPREAD=0 (read at every call) leaves the workers wherever the scheduler puts them.
bool SpreadEnabled() { return kshare::EnvSwitchOn("KSHARE_CPU_SPREAD"); }

class Pool {
 public:
  // Never destroyed: its workers sleep through process exit.
  static Pool& Get() {
    static Pool* pool = new Pool();
    return *pool;
  }

  // Runs chunk t of f on worker t (the calling thread takes chunk 0). False when another thread
  // is using the pool; the caller then runs the loop some other way.
  bool Run(int threads, int64_t begin, int64_t end, int64_t chunk, int tasks, const std::function<void(int64_t, int64_t)>& f) {
    std::unique_lock<std::mutex> job(jobMutex_, std::try_to_lock);
    if (!job.owns_lock()) return false;
    Resize(threads);
    // Read here, on the calling thread: a worker calling getenv could race a setenv from JavaScript.
    const std::chrono::microseconds spin = kshare::PoolSpinLimit();
    spinUs_.store(spin.count(), std::memory_order_relaxed);
    job_ = &f;
    begin_ = begin;
    end_ = end;
    chunk_ = chunk;
    tasks_ = tasks;
    error_ = nullptr;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    Publish();
    const int callerCpu = CurrentCpu();
    RunTask(0);
    // The workers' chunks: spin, then sleep until the last one finishes (yielding instead cost a
    // scheduler tick at a time beside another job).
    auto finished = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!SpinUntil(finished, spin)) {
      std::unique_lock<std::mutex> lock(sleepMutex_);
      done_.wait(lock, finished);
    }
    job_ = nullptr;
    jobs_.fetch_add(1, std::memory_order_relaxed);
    if (SpreadEnabled()) Spread(callerCpu);
    if (error_) std::rethrow_exception(error_);
    return true;
  }

  int64_t Workers() {
    std::lock_guard<std::mutex> job(jobMutex_);
    return static_cast<int64_t>(workers_.size());
  }
  int64_t Jobs() const { return jobs_.load(std::memory_order_relaxed); }
  int64_t Wakes() const { return wakes_.load(std::memory_order_relaxed); }
  int64_t Spreads() const { return spreads_.load(std::memory_order_relaxed); }

 private:
  // A new generation: every worker runs its chunk of the job (or, with stop_, exits).
  void Publish() {
    {
      std::lock_guard<std::mutex> lock(sleepMutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) {
      wakes_.fetch_add(1, std::memory_order_relaxed);
      wake_.notify_all();
    }
  }

  void RunTask(int task) {
    if (task >= tasks_) return;
    const int64_t b = begin_ + task * chunk_, e = std::min(end_, b + chunk_);
    if (b >= e) return;
    try {
      (*job_)(b, e);
    } catch (...) {
      std::lock_guard<std::mutex> lock(errorMutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

  // A worker is done with the current generation; the last one wakes a sleeping caller.
  void Finished() {
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    // Under the lock: a caller between its last check and sleeping holds it (wait re-checks).
    { std::lock_guard<std::mutex> lock(sleepMutex_); }
    done_.notify_all();
  }

  static int CurrentCpu() {
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
  }

  // A worker found on the caller's CPU, or on another worker's, has been stacked there by the
  // scheduler: the two take turns on one core while another idles, and the caller spins for a
  // chunk that cannot run. Seen on this project's virtual machines (a kernel that packs threads
  // that sleep often onto fewer vCPUs: sched_vcpu_pack) after the process blocked for a while,
  // and it stayed so for the rest of the process; bench/cpu-kernels-notes.md, nineteenth session.
  // Such a worker is limited to the CPUs it was allowed minus those the caller and the other
  // workers were on; the caller's own affinity is never touched. Runs after the job (every
  // worker has recorded its CPU by then) and costs a syscall only when a clash was seen.
  // Measured there (`node dist/bench/cpu-kernels.js --threads 1,2 --rounds 2 --only "depthwise
  // conv"`, 2 threads, before / after): depthwise forward at (32, 64, 16, 16) 0.46 / 0.26 ms,
  // input gradient 0.36 / 0.19, weight gradient 0.41 / 0.20; in fresh processes that never
  // block, ConvMixer-256/8 steps unchanged (KSHARE_CPU_SPREAD=0 alternating with it).
  void Spread(int callerCpu) {
#ifdef __linux__
    if (callerCpu < 0 || callerCpu >= CPU_SETSIZE || CPU_COUNT(&allowed_) < 2) return;
    cpu_set_t used;
    CPU_ZERO(&used);
    CPU_SET(callerCpu, &used);
    std::vector<size_t> clashing;
    for (size_t i = 0; i < workers_.size(); i++) {
      const int c = workerCpus_[i];
      if (c < 0 || c >= CPU_SETSIZE) continue;
      if (CPU_ISSET(c, &used)) clashing.push_back(i);
      else CPU_SET(c, &used);
    }
    if (clashing.empty()) return;
    cpu_set_t taken, free;  // free = allowed_ minus used
    CPU_AND(&taken, &allowed_, &used);
    CPU_XOR(&free, &allowed_, &taken);
    if (CPU_COUNT(&free) == 0) return;  // more threads than CPUs: nothing to spread to
    for (size_t i : clashing)
      if (pthread_setaffinity_np(workers_[i].native_handle(), sizeof(free), &free) == 0) spreads_.fetch_add(1, std::memory_order_relaxed);
#else
    (void)callerCpu;
#endif
  }

  void WorkerLoop(int task, uint64_t seen) {
#ifdef __linux__
    pthread_setname_np(pthread_self(), "kshare-pool");  // for top -H, perf and the tests
#endif
    omp_set_num_threads(1);  // oneDNN's sgemm and at::parallel_for inside a chunk: this thread only
    t_inPool = true;
    for (;;) {
      const std::chrono::microseconds spin(spinUs_.load(std::memory_order_relaxed));
      if (!SpinUntil([&] { return generation_.load(std::memory_order_acquire) != seen; }, spin)) {
        std::unique_lock<std::mutex> lock(sleepMutex_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      }
      seen = generation_.load(std::memory_order_acquire);
      const bool stop = stop_.load(std::memory_order_acquire);
      workerCpus_[task - 1] = CurrentCpu();  // read by the caller after Finished()
      if (!stop) RunTask(task);
      Finished();
      if (stop) return;
    }
  }

  // threads - 1 workers (libtorch's thread count can change between calls).
  void Resize(int threads) {
    const size_t want = static_cast<size_t>(std::max(threads, 1) - 1);
    if (workers_.size() == want) return;
    if (!workers_.empty()) {
      stop_.store(true, std::memory_order_release);
      pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
      Publish();
      for (std::thread& w : workers_) w.join();
      workers_.clear();
      stop_.store(false, std::memory_order_release);
    }
    workerCpus_.assign(want, -1);
#ifdef __linux__
    // What the workers inherit: the calling thread's CPUs (those a Spread may choose from).
    if (sched_getaffinity(0, sizeof(allowed_), &allowed_) != 0) CPU_ZERO(&allowed_);
#endif
    const uint64_t gen = generation_.load(std::memory_order_acquire);
    for (size_t i = 1; i <= want; i++) workers_.emplace_back([this, i, gen] { WorkerLoop(static_cast<int>(i), gen); });
  }

  std::mutex jobMutex_;  // one job at a time
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t begin_ = 0, end_ = 0, chunk_ = 1;
  int tasks_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex errorMutex_;
  std::exception_ptr error_;
  std::mutex sleepMutex_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::condition_variable done_;  // the caller waits here for the workers' chunks
  std::atomic<int64_t> jobs_{0};
  std::atomic<int64_t> wakes_{0};  // jobs that found a worker asleep
  std::atomic<int64_t> spreads_{0};  // workers moved off a CPU they shared (Spread)
  std::vector<int> workerCpus_;  // where each worker ran its last chunk (-1: unknown)
#ifdef __linux__
  cpu_set_t allowed_{};
#endif
  std::atomic<int64_t> spinUs_{kshare::kDefaultSpinUs};  // the last call's spin limit, for the workers
};

std::atomic<int64_t> fallbacks{0};  // loops that found another thread running the pool

bool PoolEnabled() { return kshare::EnvSwitchOn("KSHARE_CPU_POOL"); }

// Test hook: KSHARE_NATIVE_FAIL_JOBS=1 (read at every call) makes the chunk of every parallel loop
// that holds its last index fail after running, on a worker thread where there are workers, so
// the tests see an error raised inside a parallel region reach JavaScript and leave the pool
// usable.
bool FailJobs() { return kshare::EnvFlagSet("KSHARE_NATIVE_FAIL_JOBS"); }

// kshare::ParallelFor without the test hook.
void RunParallel(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (!PoolEnabled()) return at::parallel_for(begin, end, grain, f);
  const int64_t n = end - begin, threads = at::get_num_threads();
  if (t_inPool || threads <= 1 || n <= 1 || n <= grain || at::in_parallel_region()) return f(begin, end);
  // As at::parallel_for splits it: min(threads, ceil(n / grain)) chunks of ceil(n / chunks).
  const int64_t tasks = std::min(threads, (n + std::max<int64_t>(grain, 1) - 1) / std::max<int64_t>(grain, 1));
  const int64_t chunk = (n + tasks - 1) / tasks;
  const int callerThreads = omp_get_max_threads();
  omp_set_num_threads(1);
  t_inPool = true;
  bool ran = false;
  try {
    ran = Pool::Get().Run(static_cast<int>(threads), begin, end, chunk, static_cast<int>(tasks), f);
  } catch (...) {
    t_inPool = false;
    omp_set_num_threads(callerThreads);
    throw;
  }
  t_inPool = false;
  omp_set_num_threads(callerThreads);
  if (ran) return;
  fallbacks.fetch_add(1, std::memory_order_relaxed);
  at::parallel_for(begin, end, grain, f);  // another thread has the pool: libgomp's threads
}

}  // namespace

namespace kshare {

void ParallelFor(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (begin >= end) return;
  if (!FailJobs()) return RunParallel(begin, end, grain, f);
  RunParallel(begin, end, grain, [&](int64_t b, int64_t e) {
    f(b, e);
    TORCH_CHECK(e < end, "kshare: a parallel loop failed on purpose (KSHARE_NATIVE_FAIL_JOBS=1, a test hook)");
  });
}

std::chrono::microseconds PoolSpinLimit() {
  const char* p = std::getenv("KSHARE_CPU_SPIN_US");
  if (!p || !*p) return std::chrono::microseconds(kDefaultSpinUs);
  char* end = nullptr;
  const long long v = std::strtoll(p, &end, 10);
  // native.ts rejects anything else when kshare loads; a bad value set later counts as unset.
  if (*end != '\0' || v < 0 || v > 9999999) return std::chrono::microseconds(kDefaultSpinUs);
  return std::chrono::microseconds(v);
}

int64_t CpuPoolWorkers() { return Pool::Get().Workers(); }
int64_t CpuPoolJobs() { return Pool::Get().Jobs(); }
int64_t CpuPoolWakes() { return Pool::Get().Wakes(); }
int64_t CpuPoolSpreads() { return Pool::Get().Spreads(); }
int64_t CpuPoolFallbacks() { return fallbacks.load(std::memory_order_relaxed); }

}  // namespace kshare
