// kshare's CPU allocator for libtorch: large blocks are kept for reuse instead of going back to
// the kernel, so a training step does not page-fault its activations back in every time.
//
// Why: libtorch's default CPU allocator is posix_memalign(64). A training step frees and
// reallocates every activation. With glibc's default thresholds every block over 32 MiB (the
// dynamic mmap threshold) is a fresh mmap, and each of its pages faults on first touch. With
// the thresholds raised (the `kshare` command's retainFreedMemory) blocks stay in the heap, but
// memalign asks malloc for the size plus the alignment: once a small allocation lands just past
// a freed block, that block is ~100 bytes too small for the next request of the same size, the
// heap grows instead, and every new page faults again. Measured on the 2-core development VM
// (perf, convmixer_256_8_k5_p2_shared step, batch 32, NCHW, glibc 2.36 with raised
// thresholds): 10.3 ms of a ~230 ms step in page faults at 1 thread, 20.2 ms of CPU at 2
// threads (the two threads' faults contend in the kernel); a bare out-of-place add at
// (32,256,16,16) took 3.5 ms instead of 0.3 ms in about one process start out of four.
//
// How: blocks of at least kMinCachedBytes are whole pages mapped with mmap (page-aligned data; a
// side table knows their lengths). A freed block goes to a size-keyed free list; a request takes
// the smallest cached block that fits with at most 1/8 slack, else maps a new one. Free blocks
// beyond the cap (KSHARE_CPU_CACHE_MB, default 1024) are unmapped, largest first. Smaller
// requests go to malloc with a 64-byte header that carries the alignment (no memalign), so one
// deleter frees everything this allocator returns. KSHARE_CPU_ALLOCATOR=system leaves
// libtorch's allocator in place. Tensors allocated before the switch keep their own deleter.
// CUDA tensors are untouched.
//
// KSHARE_CPU_HUGEPAGES=1 starts mappings of 2 MiB and more on a huge page and marks them
// MADV_HUGEPAGE (the kernel's THP mode here is "madvise"). Off by default: steady-state steps
// were 1-8 % faster with it in three rows of bench/cpu-allocator.ts and 2 % slower in one, but
// on this VM each fresh huge page took ~10 ms to fault in (the host backs guest memory lazily),
// ~3 s of CPU for the ~600 MB the demo maps, which cancelled the gain in the 35 s demo. Long
// runs on such a machine, or machines whose memory is already backed, are where it pays.
//
// Measured, `node dist/bench/cpu-allocator.js --threads 1,2 --rounds 4`
// (bench/results/cpu-allocator.json; fresh process per measurement, medians of 4 alternating
// rounds; step ms at batch 32, NCHW, 1 thread / 2 threads; this allocator, with huge pages,
// libtorch's, libtorch's with the `kshare` command's malloc tuning): ConvMixer-64/4 shared
// 19.39 / 12.95, 17.88 / 13.20, 26.05 / 18.48, 19.01 / 13.01; ConvMixer-256/8 shared
// 226.7 / 142.8, 223.8 / 131.9, 257.2 / 164.2, 226.9 / 140.1. Page faults per step: 31-112
// here against 180-24,266. So it matches the malloc tuning without touching malloc's settings,
// which a library user's process does not have.
#include <sys/mman.h>

#include <iterator>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include "kshare.h"

namespace {

// PyTorch 2.3 made Allocator::allocate non-const and added copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define KSHARE_ALLOCATE_CONST
#else
#define KSHARE_ALLOCATE_CONST const
#endif

constexpr size_t kAlign = 64;                // libtorch's gAlignment
constexpr size_t kHeader = kAlign;           // header bytes in front of a malloc'd block's data
constexpr size_t kMinCachedBytes = 1 << 18;  // 256 KiB: smaller blocks are malloc's business
constexpr size_t kPage = 4096;
constexpr size_t kHugePage = size_t(2) << 20;
constexpr uint32_t kMagic = 0x6b73616c;  // "ksal"

// In the kHeader bytes before a malloc'd block's data.
struct Header {
  void* base;  // what malloc returned
  uint32_t magic;
};
static_assert(sizeof(Header) <= kHeader, "header must fit in front of the data");

size_t CapFromEnv() {
  const char* v = std::getenv("KSHARE_CPU_CACHE_MB");
  if (!v || !*v) return size_t(1024) << 20;
  char* end = nullptr;
  errno = 0;
  const unsigned long long mb = std::strtoull(v, &end, 10);
  // src/tensor/native.ts validates the variable before the addon loads; a bad value reaching here
  // (another host process) falls back to the default rather than aborting the process.
  if (errno || end == v || *end || v[0] == '-') return size_t(1024) << 20;
  return static_cast<size_t>(mb) << 20;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) KSHARE_ALLOCATE_CONST override {
    if (n == 0) return {nullptr, nullptr, &Free, c10::Device(c10::DeviceType::CPU)};
    void* data = n < kMinCachedBytes ? FromMalloc(n) : Instance().FromCache(n);  // one instance; allocate is const in libtorch 1.13
    return {data, data, &Free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &Free; }
  // Pure virtual from PyTorch 2.3 on; a plain member before.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  static void Free(void* data) {
    if (!data || Instance().Release(data)) return;
    Header* h = reinterpret_cast<Header*>(static_cast<char*>(data) - kHeader);
    if (h->magic != kMagic) {
      // A deleter cannot throw; a block this allocator did not hand out is memory corruption.
      std::fprintf(stderr, "kshare CPU allocator: freeing %p, which it did not allocate\n", data);
      std::abort();
    }
    h->magic = 0;
    std::free(h->base);
  }

  static CachingCpuAllocator& Instance() {
    // Never destroyed: tensors freed during process exit still need it.
    static CachingCpuAllocator* a = new CachingCpuAllocator();
    return *a;
  }

  struct Stats {
    size_t cachedBytes, mappedBytes, hits, misses;
  };
  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cachedBytes_, mappedBytes_, hits_, misses_};
  }
  void EmptyCache() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [bytes, base] : free_) Unmap(base, bytes);
    free_.clear();
    cachedBytes_ = 0;
  }
  size_t cap() const { return cap_; }
  bool hugePages() const { return huge_; }

 private:
  CachingCpuAllocator() : cap_(CapFromEnv()), huge_(std::getenv("KSHARE_CPU_HUGEPAGES") && std::string(std::getenv("KSHARE_CPU_HUGEPAGES")) == "1") {}

  // The header carries the alignment, so no memalign (whose fragmentation this file avoids).
  static void* FromMalloc(size_t n) {
    void* base = std::malloc(n + kHeader + kAlign);
    TORCH_CHECK(base, "kshare CPU allocator: out of memory allocating ", n, " bytes");
    const uintptr_t data = (reinterpret_cast<uintptr_t>(base) + kHeader + kAlign - 1) & ~uintptr_t(kAlign - 1);
    Header* h = reinterpret_cast<Header*>(data - kHeader);
    *h = {base, kMagic};
    return reinterpret_cast<void*>(data);
  }

  // A cached block (whole pages, page-aligned data) that fits n with at most 1/8 slack, or a new one.
  void* FromCache(size_t n) {
    TORCH_CHECK(n <= SIZE_MAX / 2, "kshare CPU allocator: out of memory allocating ", n, " bytes (more than the address space)");
    const size_t bytes = (n + kPage - 1) & ~(kPage - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 8) {
        void* base = it->second;
        cachedBytes_ -= it->first;
        inUse_.emplace(base, it->first);
        free_.erase(it);
        hits_++;
        return base;
      }
      misses_++;
    }
    void* base = Map(bytes);
    if (!base) {
      EmptyCache();  // the cached blocks may be what stands in the way
      base = Map(bytes);
      TORCH_CHECK(base, "kshare CPU allocator: out of memory allocating ", n, " bytes (mmap: ", std::strerror(errno), ")");
    }
    std::lock_guard<std::mutex> lock(mu_);
    mappedBytes_ += bytes;
    inUse_.emplace(base, bytes);
    return base;
  }

  // Back on the free list if data is one of this cache's blocks (false: a malloc'd one).
  bool Release(void* data) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = inUse_.find(data);
    if (it == inUse_.end()) return false;
    const size_t bytes = it->second;
    inUse_.erase(it);
    free_.emplace(bytes, data);
    cachedBytes_ += bytes;
    while (cachedBytes_ > cap_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cachedBytes_ -= last->first;
      Unmap(last->second, last->first);
      free_.erase(last);
    }
    return true;
  }

  // A fresh anonymous mapping. From kHugePage on, its start is aligned to a huge page and it is
  // marked for transparent huge pages (the kernel's mode here is "madvise"): the kernel backs its
  // whole 2 MiB stretches with huge pages and the tail with small ones, so nothing is rounded up.
  void* Map(size_t bytes) const {
    if (!huge_ || bytes < kHugePage) {
      void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    void* p = ::mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(p), aligned = (start + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    if (aligned > start) ::munmap(p, aligned - start);
    ::munmap(reinterpret_cast<void*>(aligned + bytes), start + kHugePage - aligned);
    ::madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
    return reinterpret_cast<void*>(aligned);
  }

  // Called with mu_ held.
  void Unmap(void* base, size_t bytes) {
    ::munmap(base, bytes);
    mappedBytes_ -= bytes;
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;          // mapping length -> mapping start
  std::unordered_map<void*, size_t> inUse_;    // mapping start (the data) -> length
  size_t cachedBytes_ = 0, mappedBytes_ = 0, hits_ = 0, misses_ = 0;
  const size_t cap_;
  const bool huge_;
};

bool g_installed = false;

Napi::Value CpuAllocatorInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("installed", g_installed);
  auto& a = CachingCpuAllocator::Instance();
  const auto s = a.stats();
  o.Set("cachedBytes", static_cast<double>(s.cachedBytes));
  o.Set("mappedBytes", static_cast<double>(s.mappedBytes));
  o.Set("hits", static_cast<double>(s.hits));
  o.Set("misses", static_cast<double>(s.misses));
  o.Set("capBytes", static_cast<double>(a.cap()));
  o.Set("minCachedBytes", static_cast<double>(kMinCachedBytes));
  o.Set("hugePages", a.hugePages());
  return o;
}

Napi::Value EmptyCpuCache(const Napi::CallbackInfo& info) {
  CachingCpuAllocator::Instance().EmptyCache();
  return info.Env().Undefined();
}

}  // namespace

namespace kshare {

void RegisterCpuAllocator(Napi::Env env, Napi::Object exports) {
  // Once per process (worker threads load the addon again); priority 1 so it replaces
  // libtorch's own (registered at 0) and nothing of equal rank replaces it back.
  static std::once_flag once;
  std::call_once(once, [] {
    const char* mode = std::getenv("KSHARE_CPU_ALLOCATOR");
    if (mode && std::string(mode) == "system") return;
    c10::SetCPUAllocator(&CachingCpuAllocator::Instance(), 1);
    g_installed = true;
  });
  exports.Set("cpuAllocatorInfo", Napi::Function::New(env, CpuAllocatorInfo, "cpuAllocatorInfo"));
  exports.Set("emptyCpuCache", Napi::Function::New(env, EmptyCpuCache, "emptyCpuCache"));
}

}  // namespace kshare
