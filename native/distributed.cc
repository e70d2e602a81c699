// Process groups for data-parallel training: PyTorch's own c10d (TCPStore rendezvous, Gloo for
// CPU tensors, NCCL for CUDA tensors when the libtorch build has it). Nothing here reduces
// tensors itself; it hands them to c10d and adds what a JS caller needs around it:
//  - the blocking rendezvous runs off the JS thread (a Promise), so the event loop keeps going;
//  - every wait has a deadline, and a failed or late collective becomes an Error that says which
//    rank is at fault, from heartbeats every rank writes to the store on a thread of its own;
//  - a gradient bucketer (DDP's scheme): gradients of distinct parameters are copied into flat
//    buckets by autograd hooks as backward produces them, and each full bucket's all-reduce is
//    launched at once, in the same bucket order on every rank, overlapping with the rest of the
//    backward pass.
// Built with -DUSE_C10D_GLOO (headers from libgloo-dev, or a PyTorch install's own) and, for a
// CUDA libtorch with NCCL headers, -DUSE_C10D_NCCL. Without Gloo the functions exist and say why
// they cannot work.
#include "kshare.h"

#include <torch/version.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace kshare {
namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr uint32_t kGroupMagic = 0x4b504752;     // "KPGR"
constexpr uint32_t kWorkMagic = 0x4b57524b;      // "KWRK"
constexpr uint32_t kBucketerMagic = 0x4b424b54;  // "KBKT"

template <typename T>
T* UnwrapBox(const Napi::Value& v, uint32_t magic, const char* what) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected a handle");
  T* box = v.As<Napi::External<T>>().Data();
  if (box == nullptr || box->magic != magic) throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected a handle of another kind");
  return box;
}

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  return info[i].As<Napi::Number>().Int64Value();
}

#ifdef USE_C10D_GLOO

// Collective ops return c10d::Work in 1.13 and in 2.x.
using WorkPtr = c10::intrusive_ptr<c10d::Work>;

std::string Seconds(Ms ms) {
  std::ostringstream o;
  o << ms.count() / 1000.0 << " s";
  return o.str();
}

std::string What(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

struct GroupState {
  std::string host;
  int port = 0;
  int rank = 0;
  int size = 1;
  Ms timeout{30000};
  Ms heartbeat{1000};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#ifdef USE_C10D_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
  // Collectives launched by this rank; every rank launches the same sequence.
  std::atomic<int64_t> seq{0};
  std::string broken;  // set after the first failure: the group cannot be used again
  std::mutex mu;

  // Heartbeats: a second store connection used only by the heartbeat thread and diagnosis.
  c10::intrusive_ptr<c10d::Store> hbStore;
  std::mutex hbMu;
  std::thread hbThread;
  std::mutex stopMu;
  std::condition_variable stopCv;
  bool stopping = false;
  int64_t beats = 0;

  std::string prefix() const { return "rank " + std::to_string(rank) + "/" + std::to_string(size); }
  static std::string key(int r) { return "kshare/hb/" + std::to_string(r); }

  void startHeartbeat() {
    hbThread = std::thread([this] {
      std::unique_lock<std::mutex> lk(stopMu);
      while (!stopping) {
        try {
          std::lock_guard<std::mutex> g(hbMu);
          std::string v = std::to_string(++beats) + " " + std::to_string(seq.load());
          hbStore->set(key(rank), std::vector<uint8_t>(v.begin(), v.end()));
        } catch (...) {
          return;  // store gone: rank 0 exited; the next collective reports it
        }
        stopCv.wait_for(lk, heartbeat, [this] { return stopping; });
      }
    });
  }

  void stopHeartbeat() {
    {
      std::lock_guard<std::mutex> lk(stopMu);
      stopping = true;
    }
    stopCv.notify_all();
    if (hbThread.joinable()) hbThread.join();
  }

  // (beat, seq) of every rank; throws when the store cannot be reached.
  std::vector<std::pair<int64_t, int64_t>> snapshot() {
    std::lock_guard<std::mutex> g(hbMu);
    std::vector<std::pair<int64_t, int64_t>> out(size, {-1, -1});
    for (int r = 0; r < size; r++) {
      if (!hbStore->check({key(r)})) continue;
      auto b = hbStore->get(key(r));
      std::istringstream in(std::string(b.begin(), b.end()));
      in >> out[r].first >> out[r].second;
    }
    return out;
  }

  // Which rank is at fault, judged from two heartbeat snapshots a few intervals apart.
  std::string diagnose() {
    if (size < 2) return "";
    auto waitMs = heartbeat * 5 / 2;
    try {
      auto a = snapshot();
      std::this_thread::sleep_for(waitMs);
      auto b = snapshot();
      int64_t mine = seq.load();
      std::ostringstream out;
      int found = 0;
      for (int r = 0; r < size; r++) {
        if (r == rank) continue;
        if (b[r].first < 0) {
          out << (found++ ? "; " : "") << "rank " << r << " never joined the heartbeat (it died early)";
        } else if (a[r].first == b[r].first) {
          out << (found++ ? "; " : "") << "rank " << r << " stopped responding (no heartbeat within "
              << Seconds(waitMs) << ": the process died or is frozen)";
        } else if (b[r].second < mine) {
          out << (found++ ? "; " : "") << "rank " << r << " is alive but has not reached collective #" << mine
              << " (it is at #" << b[r].second << "): it is stuck, or slower than the timeout";
        }
      }
      if (!found) return "no other rank looks dead or stuck";
      return out.str();
    } catch (const std::exception&) {
      return "rank 0 stopped responding (the rendezvous store it hosts at " + host + ":" + std::to_string(port) +
             " is unreachable: it died or its machine is down)";
    }
  }

  // Marks the group broken and builds the message every later call repeats.
  std::string fail(const std::string& op, const std::string& why) {
    std::lock_guard<std::mutex> g(mu);
    if (broken.empty()) {
      std::string diag = diagnose();
      broken = "distributed " + op + " failed on " + prefix() + ": " + why + (diag.empty() ? "" : ". Diagnosis: " + diag);
    }
    return broken;
  }

  void checkUsable(Napi::Env env) {
    std::lock_guard<std::mutex> g(mu);
    if (!broken.empty()) throw Napi::Error::New(env, broken + " (the process group is unusable after a failure)");
  }

  ~GroupState() {
    stopHeartbeat();
  }
};

struct GroupBox {
  uint32_t magic = kGroupMagic;
  std::shared_ptr<GroupState> g;
};

GroupState& UnwrapGroup(const Napi::Value& v, const char* what) {
  GroupBox* box = UnwrapBox<GroupBox>(v, kGroupMagic, what);
  if (!box->g) throw Napi::Error::New(v.Env(), std::string(what) + ": the process group was destroyed");
  return *box->g;
}

// Waits for a collective with a deadline, polling so that the same code serves Gloo and NCCL
// works in 1.13 and 2.x (their wait(timeout) overloads differ in what they do on expiry).
void WaitWork(GroupState& g, const WorkPtr& w, Ms timeout, const std::string& op) {
  auto deadline = Clock::now() + timeout;
  auto nap = std::chrono::microseconds(50);
  while (!w->isCompleted()) {
    if (Clock::now() >= deadline) {
      throw std::runtime_error(g.fail(op, "not finished after " + Seconds(timeout) + " (timeout)"));
    }
    std::this_thread::sleep_for(nap);
    if (nap < std::chrono::microseconds(5000)) nap *= 2;
  }
  try {
    w->wait();  // completed: returns at once or rethrows the collective's error
  } catch (const std::exception& e) {
    throw std::runtime_error(g.fail(op, What(e)));
  }
}

// NCCL for CUDA tensors when this build and run have it, Gloo otherwise. (In 2.x these are
// c10d::Backend subclasses, in 1.13 ProcessGroup subclasses: only their common methods are used.)
template <typename F>
WorkPtr OnBackend(GroupState& g, const at::Tensor& t, F&& f) {
#ifdef USE_C10D_NCCL
  if (t.is_cuda() && g.nccl) return f(*g.nccl);
#endif
  (void)t;
  return f(*g.gloo);
}

// ---- init (off the JS thread: the rendezvous blocks until every rank has joined) ----
class InitWorker : public Napi::AsyncWorker {
 public:
  InitWorker(Napi::Env env, std::shared_ptr<GroupState> g, std::string deviceHost, std::string ifname, bool useNccl)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), g_(std::move(g)),
        deviceHost_(std::move(deviceHost)), ifname_(std::move(ifname)), useNccl_(useNccl) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    auto& g = *g_;
    std::string stage = "connecting to the rendezvous store";
    try {
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(g.port);
      so.isServer = g.rank == 0;
      so.numWorkers = static_cast<size_t>(g.size);
      so.waitWorkers = true;
      so.timeout = g.timeout;
      auto tcp = c10::make_intrusive<c10d::TCPStore>(g.host, so);
      g.store = tcp;
      c10d::TCPStoreOptions ho = so;
      ho.isServer = false;
      ho.numWorkers = decltype(ho.numWorkers){};  // empty (c10::optional in 1.13, std::optional in 2.x)
      ho.waitWorkers = false;
      g.hbStore = c10::make_intrusive<c10d::TCPStore>(g.host, ho);
      stage = "creating the Gloo process group";
      auto opts = c10d::ProcessGroupGloo::Options::create(g.timeout);
      if (!ifname_.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname_));
      else if (!deviceHost_.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(deviceHost_));
      else opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      opts->threads = 2;
      g.gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", g.store), g.rank, g.size, opts);
#ifdef USE_C10D_NCCL
      if (useNccl_) {
        stage = "creating the NCCL process group";
        auto no = c10d::ProcessGroupNCCL::Options::create();
        no->timeout = g.timeout;
        g.nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", g.store), g.rank, g.size, no);
      }
#endif
      g.startHeartbeat();
    } catch (const std::exception& e) {
      SetError("distributed init failed on " + g.prefix() + " while " + stage + " (" + g.host + ":" + std::to_string(g.port) +
               ", timeout " + Seconds(g.timeout) + "): " + What(e));
    }
  }
  void OnOK() override {
    auto box = new GroupBox{kGroupMagic, g_};
    // No destructor in the finalizer: tearing a process group down waits for its threads, which
    // must not happen inside GC or at exit with a dead peer. destroy() releases it explicitly.
    deferred_.Resolve(Napi::External<GroupBox>::New(Env(), box, [](Napi::Env, GroupBox* b) { b->magic = 0; }));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<GroupState> g_;
  std::string deviceHost_, ifname_;
  bool useNccl_;
};

// distInit({host, port, rank, worldSize, timeoutMs, heartbeatMs, deviceHost, ifname, nccl}) -> Promise<group>
Napi::Value DistInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) throw Napi::TypeError::New(env, "distInit: expected an options object");
  auto o = info[0].As<Napi::Object>();
  auto g = std::make_shared<GroupState>();
  g->host = o.Get("host").As<Napi::String>().Utf8Value();
  g->port = o.Get("port").As<Napi::Number>().Int32Value();
  g->rank = o.Get("rank").As<Napi::Number>().Int32Value();
  g->size = o.Get("worldSize").As<Napi::Number>().Int32Value();
  g->timeout = Ms(o.Get("timeoutMs").As<Napi::Number>().Int64Value());
  g->heartbeat = Ms(o.Get("heartbeatMs").As<Napi::Number>().Int64Value());
  std::string deviceHost = o.Has("deviceHost") && o.Get("deviceHost").IsString() ? o.Get("deviceHost").As<Napi::String>().Utf8Value() : "";
  std::string ifname = o.Has("ifname") && o.Get("ifname").IsString() ? o.Get("ifname").As<Napi::String>().Utf8Value() : "";
  bool nccl = o.Has("nccl") && o.Get("nccl").IsBoolean() && o.Get("nccl").As<Napi::Boolean>().Value();
  auto* w = new InitWorker(env, g, deviceHost, ifname, nccl);
  auto p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value DistDestroy(const Napi::CallbackInfo& info) {
  GroupBox* box = UnwrapBox<GroupBox>(info[0], kGroupMagic, "distDestroy");
  box->g.reset();
  return info.Env().Undefined();
}

Napi::Value DistInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto& g = UnwrapGroup(info[0], "distInfo");
  auto o = Napi::Object::New(env);
  o.Set("rank", g.rank);
  o.Set("worldSize", g.size);
  o.Set("collectives", static_cast<double>(g.seq.load()));
  bool nccl = false;
#ifdef USE_C10D_NCCL
  nccl = static_cast<bool>(g.nccl);
#endif
  o.Set("nccl", nccl);
  return o;
}

// ---- single collectives with work handles ----
struct WorkBox {
  uint32_t magic = kWorkMagic;
  std::shared_ptr<GroupState> g;
  WorkPtr work;
  std::vector<at::Tensor> tensors;
  double divideBy = 1;  // 'avg' on Gloo (which has no AVG): sum, then divide when done
  std::string op;
  bool finished = false;
};

Napi::Value NewWork(Napi::Env env, std::shared_ptr<GroupState> g, WorkPtr w, std::vector<at::Tensor> ts, double div, std::string op) {
  auto* box = new WorkBox{kWorkMagic, std::move(g), std::move(w), std::move(ts), div, std::move(op)};
  return Napi::External<WorkBox>::New(env, box, [](Napi::Env, WorkBox* b) { delete b; });
}

std::shared_ptr<GroupState> SharedGroup(const Napi::Value& v, const char* what) {
  UnwrapGroup(v, what);
  return UnwrapBox<GroupBox>(v, kGroupMagic, what)->g;
}

at::Tensor CollectiveTensor(const Napi::CallbackInfo& info, size_t i, const char* what) {
  const at::Tensor& t = UnwrapTensor(info[i], what);
  if (!t.is_contiguous()) throw Napi::Error::New(info.Env(), std::string(what) + ": the tensor must be contiguous");
  return t;
}

// distAllReduce(group, tensor, 'sum'|'avg') -> work   (in place)
Napi::Value DistAllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto g = SharedGroup(info[0], "allReduce");
  g->checkUsable(env);
  at::Tensor t = CollectiveTensor(info, 1, "allReduce");
  std::string op = info[2].As<Napi::String>().Utf8Value();
  if (op != "sum" && op != "avg") throw Napi::TypeError::New(env, "allReduce: op must be 'sum' or 'avg', got '" + op + "'");
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  WorkPtr w;
  try {
    g->seq++;
    w = OnBackend(*g, t, [&](auto& pg) { return pg.allreduce(ts, o); });
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, g->fail("allReduce", What(e)));
  }
  return NewWork(env, g, w, ts, op == "avg" ? g->size : 1, "allReduce");
}

// distBroadcast(group, tensor, root) -> work   (in place)
Napi::Value DistBroadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto g = SharedGroup(info[0], "broadcast");
  g->checkUsable(env);
  at::Tensor t = CollectiveTensor(info, 1, "broadcast");
  int64_t root = IntArg(info, 2, "broadcast: root");
  if (root < 0 || root >= g->size) throw Napi::RangeError::New(env, "broadcast: root must be a rank in [0, " + std::to_string(g->size) + "), got " + std::to_string(root));
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  WorkPtr w;
  try {
    g->seq++;
    w = OnBackend(*g, t, [&](auto& pg) { return pg.broadcast(ts, o); });
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, g->fail("broadcast", What(e)));
  }
  return NewWork(env, g, w, ts, 1, "broadcast");
}

Napi::Value DistBarrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto g = SharedGroup(info[0], "barrier");
  g->checkUsable(env);
  WorkPtr w;
  try {
    g->seq++;
    w = g->gloo->barrier(c10d::BarrierOptions());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, g->fail("barrier", What(e)));
  }
  return NewWork(env, g, w, {}, 1, "barrier");
}

void FinishWork(WorkBox& b, Ms timeout) {
  if (b.finished) return;
  WaitWork(*b.g, b.work, timeout, b.op);
  if (b.divideBy != 1) {
    c10::NoGradGuard ng;
    for (auto& t : b.tensors) t.div_(b.divideBy);
  }
  b.finished = true;
}

// workWait(work, timeoutMs): blocks this thread up to the timeout (bounded; use workWaitAsync to keep the loop free)
Napi::Value WorkWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WorkBox* b = UnwrapBox<WorkBox>(info[0], kWorkMagic, "wait");
  int64_t ms = info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : b->g->timeout.count();
  try {
    FinishWork(*b, Ms(ms));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  return env.Undefined();
}

Napi::Value WorkIsCompleted(const Napi::CallbackInfo& info) {
  WorkBox* b = UnwrapBox<WorkBox>(info[0], kWorkMagic, "isCompleted");
  return Napi::Boolean::New(info.Env(), b->finished || b->work->isCompleted());
}

class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, Napi::Object keep, WorkBox* b, Ms timeout)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), b_(b), timeout_(timeout) {
    keep_ = Napi::Persistent(keep);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      FinishWork(*b_, timeout_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;  // keeps the work handle alive while waiting
  WorkBox* b_;
  Ms timeout_;
};

Napi::Value WorkWaitAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  WorkBox* b = UnwrapBox<WorkBox>(info[0], kWorkMagic, "waitAsync");
  int64_t ms = info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : b->g->timeout.count();
  auto* w = new WaitWorker(env, info[0].As<Napi::Object>(), b, Ms(ms));
  auto p = w->Promise();
  w->Queue();
  return p;
}

// ---- gradient bucketer ----
struct Bucket {
  std::vector<size_t> params;
  std::vector<int64_t> offsets;
  at::Tensor flat;
  size_t pending = 0;
  WorkPtr work;
};

struct BucketerState {
  std::shared_ptr<GroupState> g;
  std::vector<at::Tensor> params;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucketOf, slotOf;
  std::vector<bool> ready;
  std::vector<unsigned> hookIds;
  std::mutex mu;
  bool armed = false;
  size_t next = 0;  // the next bucket to launch: launches follow bucket order on every rank
  std::string hookError;
  int64_t launchedEarly = 0;  // buckets launched while backward was still running

  at::Tensor view(size_t i) {
    auto& b = buckets[bucketOf[i]];
    auto& p = params[i];
    return b.flat.narrow(0, b.offsets[slotOf[i]], p.numel()).view(p.sizes());
  }

  // Called with mu held.
  void launchReady(bool duringBackward) {
    while (next < buckets.size() && buckets[next].pending == 0) {
      std::vector<at::Tensor> ts{buckets[next].flat};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      g->seq++;
      buckets[next].work = OnBackend(*g, buckets[next].flat, [&](auto& pg) { return pg.allreduce(ts, o); });
      if (duringBackward) launchedEarly++;
      next++;
    }
  }

  void onGrad(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lk(mu);
    if (!armed || ready[i] || !hookError.empty()) return;
    try {
      c10::NoGradGuard ng;
      at::Tensor v = view(i);
      v.copy_(grad);
      // Gradients accumulated by earlier backward passes of this step count too.
      const at::Tensor& old = params[i].grad();
      if (old.defined()) v.add_(old);
      ready[i] = true;
      buckets[bucketOf[i]].pending--;
      launchReady(true);
    } catch (const std::exception& e) {
      hookError = What(e);  // reported by finish(): throwing inside autograd would lose the rank context
    }
  }
};

struct BucketerBox {
  uint32_t magic = kBucketerMagic;
  std::shared_ptr<BucketerState> s;
};

BucketerState& UnwrapBucketer(const Napi::Value& v, const char* what) {
  BucketerBox* b = UnwrapBox<BucketerBox>(v, kBucketerMagic, what);
  if (!b->s) throw Napi::Error::New(v.Env(), std::string(what) + ": the bucketer was destroyed");
  return *b->s;
}

void RemoveHooks(BucketerState& s) {
  for (size_t i = 0; i < s.hookIds.size(); i++) s.params[i].remove_hook(s.hookIds[i]);
  s.hookIds.clear();
}

// bucketerNew(group, params[], bucketCapBytes) -> bucketer; params: distinct, requiring grad
Napi::Value BucketerNew(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto g = SharedGroup(info[0], "bucketer");
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, "bucketer: params must be an array of tensors");
  auto arr = info[1].As<Napi::Array>();
  int64_t cap = IntArg(info, 2, "bucketer: bucketCapBytes");
  if (cap < 1) throw Napi::RangeError::New(env, "bucketer: bucketCapBytes must be positive");
  auto s = std::make_shared<BucketerState>();
  s->g = g;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    const at::Tensor& p = UnwrapTensor(arr.Get(i), "bucketer");
    if (!p.requires_grad() || !p.is_leaf()) throw Napi::Error::New(env, "bucketer: parameter " + std::to_string(i) + " is not a leaf tensor requiring grad");
    for (auto& q : s->params)
      if (q.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) throw Napi::Error::New(env, "bucketer: parameter " + std::to_string(i) + " is listed twice (pass each shared parameter once)");
    s->params.push_back(p);
  }
  size_t n = s->params.size();
  s->bucketOf.assign(n, 0);
  s->slotOf.assign(n, 0);
  s->ready.assign(n, false);
  // Reverse registration order: backward produces the last layers' gradients first (as DDP).
  int64_t bytes = 0;
  for (size_t k = n; k-- > 0;) {
    auto& p = s->params[k];
    int64_t pb = p.numel() * static_cast<int64_t>(p.element_size());
    bool fresh = s->buckets.empty() || bytes + pb > cap ||
                 s->params[s->buckets.back().params.front()].scalar_type() != p.scalar_type() ||
                 s->params[s->buckets.back().params.front()].device() != p.device();
    if (fresh) {
      s->buckets.emplace_back();
      bytes = 0;
    }
    auto& b = s->buckets.back();
    s->bucketOf[k] = s->buckets.size() - 1;
    s->slotOf[k] = b.params.size();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + s->params[b.params.back()].numel());
    b.params.push_back(k);
    bytes += pb;
  }
  for (auto& b : s->buckets) {
    auto& last = s->params[b.params.back()];
    b.flat = at::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  std::weak_ptr<BucketerState> weak = s;
  for (size_t i = 0; i < n; i++) {
    s->hookIds.push_back(s->params[i].register_hook([weak, i](const at::Tensor& grad) {
      if (auto st = weak.lock()) st->onGrad(i, grad);
    }));
  }
  auto* box = new BucketerBox{kBucketerMagic, s};
  return Napi::External<BucketerBox>::New(env, box, [](Napi::Env, BucketerBox* b) { delete b; });
}

Napi::Value BucketerInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto& s = UnwrapBucketer(info[0], "bucketerInfo");
  auto sizes = Napi::Array::New(env, s.buckets.size());
  int64_t total = 0;
  for (size_t i = 0; i < s.buckets.size(); i++) {
    int64_t b = s.buckets[i].flat.numel() * static_cast<int64_t>(s.buckets[i].flat.element_size());
    sizes.Set(i, Napi::Number::New(env, static_cast<double>(b)));
    total += b;
  }
  auto o = Napi::Object::New(env);
  o.Set("bucketBytes", sizes);
  o.Set("bytes", static_cast<double>(total));
  return o;
}

// bucketerPrepare(b): the next backward pass feeds the buckets
Napi::Value BucketerPrepare(const Napi::CallbackInfo& info) {
  auto& s = UnwrapBucketer(info[0], "bucketerPrepare");
  s.g->checkUsable(info.Env());
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.armed) throw Napi::Error::New(info.Env(), "bucketerPrepare: the previous step was not finished (call finish after backward)");
  std::fill(s.ready.begin(), s.ready.end(), false);
  for (auto& b : s.buckets) {
    b.pending = b.params.size();
    b.work.reset();
  }
  s.next = 0;
  s.launchedEarly = 0;
  s.hookError.clear();
  s.armed = true;
  return info.Env().Undefined();
}

// bucketerFinish(b, timeoutMs) -> {waitMs, launchedEarly, buckets}: every parameter's .grad
// becomes the average over ranks. Parameters backward did not reach contribute their current
// gradient (or zeros), so every rank launches the same buckets.
Napi::Value BucketerFinish(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto& s = UnwrapBucketer(info[0], "bucketerFinish");
  int64_t ms = info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : s.g->timeout.count();
  std::unique_lock<std::mutex> lk(s.mu);
  if (!s.armed) throw Napi::Error::New(env, "bucketerFinish: bucketerPrepare was not called before backward");
  s.armed = false;
  auto t0 = Clock::now();
  try {
    if (!s.hookError.empty()) throw std::runtime_error(s.g->fail("gradient all-reduce", s.hookError));
    c10::NoGradGuard ng;
    for (size_t i = 0; i < s.params.size(); i++) {
      if (s.ready[i]) continue;
      at::Tensor v = s.view(i);
      const at::Tensor& old = s.params[i].grad();
      if (old.defined()) v.copy_(old);
      else v.zero_();
      s.ready[i] = true;
      s.buckets[s.bucketOf[i]].pending--;
    }
    try {
      s.launchReady(false);
    } catch (const std::exception& e) {
      throw std::runtime_error(s.g->fail("gradient all-reduce", What(e)));
    }
    auto deadline = t0 + Ms(ms);
    for (auto& b : s.buckets) {
      auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now());
      WaitWork(*s.g, b.work, left.count() > 0 ? left : Ms(0), "gradient all-reduce");
      b.work.reset();
      b.flat.div_(static_cast<double>(s.g->size));
    }
    for (size_t i = 0; i < s.params.size(); i++) {
      at::Tensor v = s.view(i);
      at::Tensor& grad = s.params[i].mutable_grad();
      if (grad.defined()) grad.copy_(v);
      else grad = v.clone();
    }
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  double waitMs = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  auto o = Napi::Object::New(env);
  o.Set("waitMs", waitMs);
  o.Set("launchedEarly", static_cast<double>(s.launchedEarly));
  o.Set("buckets", static_cast<double>(s.buckets.size()));
  return o;
}

Napi::Value BucketerDestroy(const Napi::CallbackInfo& info) {
  BucketerBox* b = UnwrapBox<BucketerBox>(info[0], kBucketerMagic, "bucketerDestroy");
  if (b->s) {
    std::lock_guard<std::mutex> lk(b->s->mu);
    RemoveHooks(*b->s);
  }
  b->s.reset();
  return info.Env().Undefined();
}

#endif  // USE_C10D_GLOO

Napi::Value DistAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
#ifdef USE_C10D_GLOO
  o.Set("gloo", true);
#else
  o.Set("gloo", false);
#endif
#ifdef USE_C10D_NCCL
  o.Set("nccl", true);
#else
  o.Set("nccl", false);
#endif
  return o;
}

}  // namespace

void RegisterDistributed(Napi::Env env, Napi::Object exports) {
  using Fn = Napi::Value (*)(const Napi::CallbackInfo&);
  auto fn = [&](const char* name, Fn f) {
    exports.Set(name, Napi::Function::New(
                          env,
                          [f, name](const Napi::CallbackInfo& info) -> Napi::Value {
                            try {
                              return f(info);
                            } catch (const Napi::Error&) {
                              throw;
                            } catch (const std::exception& e) {
                              throw Napi::Error::New(info.Env(), std::string(name) + ": " + e.what());
                            }
                          },
                          name));
  };
  fn("distAvailable", DistAvailable);
#ifdef USE_C10D_GLOO
  fn("distInit", DistInit);
  fn("distDestroy", DistDestroy);
  fn("distInfo", DistInfo);
  fn("distAllReduce", DistAllReduce);
  fn("distBroadcast", DistBroadcast);
  fn("distBarrier", DistBarrier);
  fn("workWait", WorkWait);
  fn("workWaitAsync", WorkWaitAsync);
  fn("workIsCompleted", WorkIsCompleted);
  fn("bucketerNew", BucketerNew);
  fn("bucketerInfo", BucketerInfo);
  fn("bucketerPrepare", BucketerPrepare);
  fn("bucketerFinish", BucketerFinish);
  fn("bucketerDestroy", BucketerDestroy);
#endif
}

}  // namespace kshare
