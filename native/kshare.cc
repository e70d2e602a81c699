// kshare native addon: libtorch behind N-API.
//
// The boundary is deliberately thin. Every ATen operator is reached through one generic
// entry point, `call(opId, args)`, which looks the operator up in libtorch's dispatcher
// and converts JavaScript arguments according to the operator's own schema. Going through
// the dispatcher (rather than hand-written wrappers) means autograd, autocast and the CUDA
// kernels all apply exactly as they do for PyTorch's Python frontend. TypeScript decides
// which operators exist (src/tensor/kernels.ts) and validates arguments before calling.
//
// Tensors cross as Napi::External<TensorBox>. JS never owns the memory: `dispose`
// releases it immediately and the live count tracks what is still held. A GC finalizer
// frees boxes that were dropped without dispose, as a backstop only.

#include "kshare.h"
#include "amx_gemm.h"
#include "conv_gelu_bn.h"
#include "cpu_thread_pool.h"
#include "fused_gelu_bn.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/cuda.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <atomic>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <pthread.h>
#include <signal.h>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <cstring>
#include <string>
#include <vector>

namespace {

// ---- libtorch messages for people ----
// libtorch's errors can run to fifty lines (the dispatcher lists every backend it knows);
// users get the first paragraph, at most a few sentences, and the full text stays on the
// error object (libtorchMessage) for KSHARE_DEBUG.
std::string ShortTorchMessage(const std::string& full) {
  std::string m = full.substr(0, full.find("\n\n"));
  const std::string from = "with arguments from the '";
  size_t at = m.find(from);
  if (m.rfind("Could not run '", 0) == 0 && at != std::string::npos) {
    size_t end = m.find('\'', at + from.size());
    std::string backend = m.substr(at + from.size(), end - at - from.size());
    const size_t start = std::strlen("Could not run '");
    std::string op = m.substr(start, m.find('\'', start) - start);
    return "'" + op + "' has no " + backend + " kernel in this libtorch build (it was built without " + backend + " support)";
  }
  for (char& c : m) if (c == '\n') c = ' ';
  const size_t limit = 400;
  if (m.size() > limit) {
    size_t cut = m.rfind(". ", limit);
    m = m.substr(0, cut == std::string::npos || cut < 80 ? limit : cut + 1) + " [...]";
  }
  return m;
}

Napi::Error TorchError(Napi::Env env, const std::string& where, const std::string& full) {
  Napi::Error err = Napi::Error::New(env, where + ": " + ShortTorchMessage(full));
  err.Value().Set("libtorchMessage", Napi::String::New(env, full));
  return err;
}

// libtorch warnings (TORCH_WARN) are collected here instead of going to stderr, and handed to
// the JavaScript handler set with setWarningHandler after the call that raised them returns,
// so one place in src/tensor decides what a user sees. One collector a thread and one handler an
// environment: libtorch's handler is thread-local, and each worker_threads Worker that imports
// kshare is a JavaScript environment of its own on its own thread, whose warnings must reach its
// own handler (a single global handler was replaced by the last environment to load, and the
// others' warnings then went to a function of another isolate).
class CollectingWarningHandler : public c10::WarningHandler {
 public:
#if TORCH_VERSION_MAJOR >= 2  // 2.0 passes one c10::Warning
  void process(const c10::Warning& warning) override { keep(warning.msg()); }
#else
  void process(const c10::SourceLocation&, const std::string& msg, const bool) override { keep(msg); }
#endif
  void keep(const std::string& msg) {
    if (pending_.size() < 100) pending_.push_back(msg);
  }
  std::deque<std::string> take() {
    std::deque<std::string> out;
    out.swap(pending_);
    return out;
  }
 private:
  std::deque<std::string> pending_;  // this thread's only: libtorch calls the handler of the thread that warns
};

thread_local CollectingWarningHandler t_warnings;

// What belongs to one JavaScript environment (the main thread's, or a Worker's), kept as the
// environment's instance data and deleted with it.
struct EnvData {
  Napi::FunctionReference warningCallback;
};

// Asynchronous signals (Ctrl-C, SIGCHLD, a profiler's SIGPROF, ...) stay blocked on the calling
// thread while an operator or a backward runs, and are delivered when it returns. Why: oneDNN
// 2.6's JIT f32 GEMM kernels (Debian's libdnnl, behind native/pointwise_conv.cc and some of
// libtorch's oneDNN paths) point the stack register into a heap workspace while they run, so a
// signal handled on that thread writes its frame into the heap (oneDNN issue #4845, fixed in
// 3.11.2): `node --cpu-prof` aborted a ConvMixer inference with "corrupted size vs. prev_size",
// and signals sent to a 2-thread run did too (test/signals.test.ts). libtorch's OpenMP workers
// and kshare's own kernel threads (cpu_thread_pool.cc) are created inside operators, so they
// inherit the blocked mask and keep it; the process's
// signals then go to Node's own threads. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
// SIGSYS, SIGABRT) are never blocked. One block/restore pair took ~0.19 us here.
const sigset_t& AsyncSignals() {
  static const sigset_t set = [] {
    sigset_t s;
    sigfillset(&s);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&s, sig);
    return s;
  }();
  return set;
}

class AsyncSignalsBlocked {
 public:
  AsyncSignalsBlocked() { pthread_sigmask(SIG_BLOCK, &AsyncSignals(), &saved_); }
  ~AsyncSignalsBlocked() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  AsyncSignalsBlocked(const AsyncSignalsBlocked&) = delete;
  AsyncSignalsBlocked& operator=(const AsyncSignalsBlocked&) = delete;

 private:
  sigset_t saved_;
};

void FlushWarnings(Napi::Env env) {
  auto pending = t_warnings.take();
  EnvData* data = env.GetInstanceData<EnvData>();
  if (pending.empty() || !data || data->warningCallback.IsEmpty()) return;
  for (const auto& w : pending) {
    try {
      data->warningCallback.Call({Napi::String::New(env, ShortTorchMessage(w))});
    } catch (const Napi::Error&) {
      // A throwing handler must not replace the result (or error) of the call itself.
    }
  }
}

std::atomic<int64_t> g_live{0};

// Externals are tagged so that a foreign External (or a generator) passed where a tensor is
// expected is refused instead of being read as the wrong type.
constexpr uint32_t kTensorMagic = 0x4b545352;     // "KTSR"
constexpr uint32_t kGeneratorMagic = 0x4b47454e;  // "KGEN"

struct TensorBox {
  uint32_t magic = kTensorMagic;
  at::Tensor t;
  bool alive = true;
  explicit TensorBox(at::Tensor tensor) : t(std::move(tensor)) { g_live++; }
  void release() {
    if (alive) {
      alive = false;
      t = at::Tensor();
      g_live--;
    }
  }
  ~TensorBox() {
    release();
    magic = 0;
  }
};

Napi::Value Wrap(Napi::Env env, at::Tensor t) {
  if (!t.defined()) return env.Null();
  return Napi::External<TensorBox>::New(env, new TensorBox(std::move(t)),
                                        [](Napi::Env, TensorBox* box) { delete box; });
}

const at::Tensor& Unwrap(const Napi::Value& v, const char* what) {
  if (!v.IsExternal()) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected a tensor handle");
  }
  TensorBox* box = v.As<Napi::External<TensorBox>>().Data();
  if (box == nullptr || box->magic != kTensorMagic) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected a tensor handle, got another native object");
  }
  if (!box->alive) {
    throw Napi::Error::New(v.Env(), std::string(what) + ": tensor was disposed");
  }
  return box->t;
}

// ---- dtype / device codes shared with src/tensor/dtype.ts ----
// 0 float32, 1 float16, 2 bfloat16, 3 int64, 4 uint8, 5 bool, 6 int32, 7 float64
const at::ScalarType kDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16, at::kLong,
                                  at::kByte,  at::kBool, at::kInt,      at::kDouble};

at::ScalarType DtypeFromCode(Napi::Env env, int code) {
  if (code < 0 || code >= 8) throw Napi::RangeError::New(env, "unknown dtype code " + std::to_string(code));
  return kDtypes[code];
}

int CodeFromDtype(at::ScalarType s) {
  for (int i = 0; i < 8; i++)
    if (kDtypes[i] == s) return i;
  return -1;
}

int64_t EnumFromName(const std::string& name) {
  static const char* dtypeNames[] = {"float32", "float16", "bfloat16", "int64", "uint8", "bool", "int32", "float64"};
  for (int i = 0; i < 8; i++)
    if (name == dtypeNames[i]) return static_cast<int64_t>(kDtypes[i]);
  if (name == "contiguous") return static_cast<int64_t>(at::MemoryFormat::Contiguous);
  if (name == "channels_last") return static_cast<int64_t>(at::MemoryFormat::ChannelsLast);
  if (name == "preserve") return static_cast<int64_t>(at::MemoryFormat::Preserve);
  return -1;
}

c10::Device DeviceFromString(const std::string& s) { return c10::Device(s); }

std::string DeviceString(const c10::Device& d) { return d.str(); }

// ---- generators (seedable random streams) ----
struct GeneratorBox {
  uint32_t magic = kGeneratorMagic;
  at::Generator gen;
};

// CUDA device `index`'s default generator (libtorch 1.13 and 2.x alike).
at::Generator CudaDefaultGenerator(int index) {
  return at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index)));
}

Napi::Value NewGenerator(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = info[0].As<Napi::String>().Utf8Value();
  uint64_t seed = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
  at::Generator gen;
  c10::Device device(dev);
  if (device.is_cuda()) {
    gen = CudaDefaultGenerator(device.index() < 0 ? 0 : device.index()).clone();
  } else {
    gen = at::detail::createCPUGenerator();
  }
  gen.set_current_seed(seed);
  return Napi::External<GeneratorBox>::New(env, new GeneratorBox{kGeneratorMagic, gen}, [](Napi::Env, GeneratorBox* g) { delete g; });
}

at::Generator& UnwrapGenerator(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a Generator");
  GeneratorBox* box = v.As<Napi::External<GeneratorBox>>().Data();
  if (box == nullptr || box->magic != kGeneratorMagic) throw Napi::TypeError::New(v.Env(), "expected a Generator, got another native object");
  return box->gen;
}

Napi::Value GeneratorState(const Napi::CallbackInfo& info) {
  auto& gen = UnwrapGenerator(info[0]);
  std::lock_guard<std::mutex> lock(gen.mutex());
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    gen.set_state(Unwrap(info[1], "generatorState"));
    return info.Env().Undefined();
  }
  return Wrap(info.Env(), gen.get_state());
}

// Integers from JS must be exact: NaN, fractions and out-of-range values are refused.
int64_t ExactInt(Napi::Env env, const Napi::Value& v, const std::string& where) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, where + " must be an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(std::floor(d) == d) || std::abs(d) > 9.007199254740992e15) {
    throw Napi::TypeError::New(env, where + " must be an integer, got " + std::to_string(d));
  }
  return static_cast<int64_t>(d);
}

// ---- operator table ----
// Operators resolved by name, each once per process (every JavaScript environment gets the same
// id for the same operator), and never removed. Shared by the environments' threads (the main
// thread and worker_threads Workers), so it is locked: an unlocked std::vector that one thread
// grew while another held a reference into it for a call crashed the process (SIGSEGV, a Worker
// resolving operators while the main thread called; test/js-threads.test.ts). A std::deque keeps
// references to its elements valid as it grows, so a call holds its entry without the lock.
struct OpEntry {
  c10::OperatorHandle op;
  std::string name;
};

class OpTable {
 public:
  // The id of name.overload, resolving it on first use (nullopt: libtorch has no such operator).
  c10::optional<uint32_t> Resolve(const std::string& name, const std::string& overload) {
    const std::string key = name + '\n' + overload;  // unambiguous, unlike name.overload
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = ids_.find(key);
    if (it != ids_.end()) return it->second;
    auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!handle) return c10::nullopt;
    const uint32_t id = static_cast<uint32_t>(entries_.size());
    entries_.push_back({*handle, overload.empty() ? name : name + "." + overload});
    ids_.emplace(key, id);
    return id;
  }
  // The entry of id, or nullptr for an id never handed out.
  const OpEntry* Get(uint32_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return id < entries_.size() ? &entries_[id] : nullptr;
  }
  size_t Size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  std::mutex mutex_;
  std::deque<OpEntry> entries_;
  std::unordered_map<std::string, uint32_t> ids_;  // "name\noverload" -> id
};

OpTable& Ops() {
  static OpTable* table = new OpTable();  // never destroyed: calls may run during process exit
  return *table;
}

c10::IValue ToIValue(Napi::Env env, const Napi::Value& v, const c10::TypePtr& type,
                     const c10::Argument& arg, const std::string& opName);

c10::IValue ListToIValue(Napi::Env env, const Napi::Value& v, const c10::ListTypePtr& lt,
                         const c10::Argument& arg, const std::string& opName) {
  auto elem = lt->getElementType();
  auto kind = elem->kind();
  if (kind == c10::TypeKind::IntType || kind == c10::TypeKind::SymIntType) {
    std::vector<int64_t> out;
    if (v.IsNumber()) {
      int64_t n = arg.N() ? *arg.N() : 1;
      out.assign(n, ExactInt(env, v, opName + ": argument '" + arg.name() + "'"));
    } else if (v.IsArray()) {
      auto a = v.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Value e = a.Get(i);
        out.push_back(ExactInt(env, e, opName + ": argument '" + arg.name() + "'"));
      }
    } else {
      throw Napi::TypeError::New(env, opName + ": argument '" + arg.name() + "' must be an integer list");
    }
    return c10::IValue(out);
  }
  if (kind == c10::TypeKind::FloatType) {
    std::vector<double> out;
    auto a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::Number>().DoubleValue());
    return c10::IValue(out);
  }
  if (kind == c10::TypeKind::BoolType) {
    c10::List<bool> out;
    auto a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(a.Get(i).As<Napi::Boolean>().Value());
    return c10::IValue(out);
  }
  if (kind == c10::TypeKind::TensorType) {
    if (!v.IsArray()) throw Napi::TypeError::New(env, opName + ": argument '" + arg.name() + "' must be a list of tensors");
    auto a = v.As<Napi::Array>();
    std::vector<at::Tensor> out;
    for (uint32_t i = 0; i < a.Length(); i++) out.push_back(Unwrap(a.Get(i), opName.c_str()));
    return c10::IValue(out);
  }
  if (kind == c10::TypeKind::OptionalType) {  // Tensor?[] (index)
    if (!v.IsArray()) throw Napi::TypeError::New(env, opName + ": argument '" + arg.name() + "' must be a list");
    auto a = v.As<Napi::Array>();
    c10::List<c10::optional<at::Tensor>> out;
    for (uint32_t i = 0; i < a.Length(); i++) {
      Napi::Value e = a.Get(i);
      if (e.IsNull() || e.IsUndefined()) out.push_back(c10::nullopt);
      else out.push_back(Unwrap(e, opName.c_str()));
    }
    return c10::IValue(out);
  }
  throw Napi::TypeError::New(env, opName + ": unsupported list type " + lt->str() + " for '" + arg.name() + "'");
}

c10::IValue ToIValue(Napi::Env env, const Napi::Value& v, const c10::TypePtr& type,
                     const c10::Argument& arg, const std::string& opName) {
  auto bad = [&](const char* want) {
    return Napi::TypeError::New(env, opName + ": argument '" + arg.name() + "' must be " + want);
  };
  switch (type->kind()) {
    case c10::TypeKind::OptionalType: {
      if (v.IsNull() || v.IsUndefined()) return c10::IValue();
      return ToIValue(env, v, type->castRaw<c10::OptionalType>()->getElementType(), arg, opName);
    }
    case c10::TypeKind::TensorType:
      return Unwrap(v, opName.c_str());
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType:
      return c10::IValue(ExactInt(env, v, opName + ": argument '" + arg.name() + "'"));
    case c10::TypeKind::ScalarTypeType:
    case c10::TypeKind::MemoryFormatType: {
      // Enum arguments (real types of schema ints): TS names them, e.g. 'float32', 'channels_last'.
      if (!v.IsString()) throw bad("a dtype or memory-format name");
      int64_t code = EnumFromName(v.As<Napi::String>().Utf8Value());
      if (code < 0) throw bad("a known dtype or memory-format name");
      return c10::IValue(code);
    }
    case c10::TypeKind::LayoutType:
      throw bad("null (only the default strided layout is supported)");
    case c10::TypeKind::FloatType:
      if (!v.IsNumber()) throw bad("a number");
      return c10::IValue(v.As<Napi::Number>().DoubleValue());
    case c10::TypeKind::BoolType:
      if (!v.IsBoolean()) throw bad("a boolean");
      return c10::IValue(v.As<Napi::Boolean>().Value());
    case c10::TypeKind::NumberType:
      if (v.IsBoolean()) return c10::IValue(c10::Scalar(v.As<Napi::Boolean>().Value()));
      if (!v.IsNumber()) throw bad("a number");
      {
        double d = v.As<Napi::Number>().DoubleValue();
        if (std::floor(d) == d && std::abs(d) < 9.0e15) return c10::IValue(c10::Scalar(static_cast<int64_t>(d)));
        return c10::IValue(c10::Scalar(d));
      }
    case c10::TypeKind::StringType:
      if (!v.IsString()) throw bad("a string");
      return c10::IValue(v.As<Napi::String>().Utf8Value());
    case c10::TypeKind::DeviceObjType:
      if (!v.IsString()) throw bad("a device string");
      return c10::IValue(DeviceFromString(v.As<Napi::String>().Utf8Value()));
    case c10::TypeKind::GeneratorType:
      return c10::IValue(UnwrapGenerator(v));
    case c10::TypeKind::ListType:
      return ListToIValue(env, v, type->cast<c10::ListType>(), arg, opName);
    default:
      throw Napi::TypeError::New(env, opName + ": unsupported argument type " + type->str() + " for '" + arg.name() + "'");
  }
}

Napi::Value FromIValue(Napi::Env env, const c10::IValue& iv) {
  if (iv.isTensor()) return Wrap(env, iv.toTensor());
  if (iv.isNone()) return env.Null();
  if (iv.isInt()) return Napi::Number::New(env, static_cast<double>(iv.toInt()));
  if (iv.isDouble()) return Napi::Number::New(env, iv.toDouble());
  if (iv.isBool()) return Napi::Boolean::New(env, iv.toBool());
  if (iv.isTensorList()) {
    auto list = iv.toTensorVector();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, Wrap(env, list[i]));
    return arr;
  }
  if (iv.isTuple()) {
    auto& elems = iv.toTupleRef().elements();
    auto arr = Napi::Array::New(env, elems.size());
    for (size_t i = 0; i < elems.size(); i++) arr.Set(i, FromIValue(env, elems[i]));
    return arr;
  }
  if (iv.isIntList()) {
    auto list = iv.toIntVector();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, Napi::Number::New(env, static_cast<double>(list[i])));
    return arr;
  }
  throw Napi::TypeError::New(env, "unsupported return type " + iv.tagKind());
}

// Resolves "aten::conv2d" / "" to a small integer used by `call` (the same in every environment).
Napi::Value OpId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].As<Napi::String>().Utf8Value();
  std::string overload = info[1].As<Napi::String>().Utf8Value();
  const c10::optional<uint32_t> id = Ops().Resolve(name, overload);
  if (!id) throw Napi::Error::New(env, "unknown libtorch operator " + (overload.empty() ? name : name + "." + overload));
  return Napi::Number::New(env, static_cast<double>(*id));
}

Napi::Value OpSchema(const Napi::CallbackInfo& info) {
  const uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  const OpEntry* entry = Ops().Get(id);
  if (!entry) throw Napi::RangeError::New(info.Env(), "opSchema: unknown operator id " + std::to_string(id));
  std::stringstream ss;
  ss << entry->op.schema();
  return Napi::String::New(info.Env(), ss.str());
}

// How many operators the process has resolved (the tests check that Workers reuse the ids).
Napi::Value OpCount(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(Ops().Size())); }

Napi::Value Call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "call: operator id must be a number");
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  const OpEntry* entry = Ops().Get(id);
  if (!entry) throw Napi::RangeError::New(env, "call: unknown operator id " + std::to_string(id));
  const c10::OperatorHandle& op = entry->op;
  const std::string& opName = entry->name;
  if (!info[1].IsArray()) throw Napi::TypeError::New(env, opName + ": arguments must be an array");
  const auto& schema = op.schema();
  const auto& args = schema.arguments();
  Napi::Array js = info[1].As<Napi::Array>();
  if (js.Length() > args.size()) {
    throw Napi::TypeError::New(env, opName + ": expected at most " + std::to_string(args.size()) +
                                        " arguments, got " + std::to_string(js.Length()));
  }
  torch::jit::Stack stack;
  stack.reserve(args.size());
  for (size_t i = 0; i < args.size(); i++) {
    Napi::Value v = i < js.Length() ? js.Get(i) : env.Undefined();
    if (v.IsUndefined()) {
      if (args[i].default_value()) {
        stack.push_back(*args[i].default_value());
        continue;
      }
      if (args[i].type()->kind() == c10::TypeKind::OptionalType) {
        stack.emplace_back();
        continue;
      }
      throw Napi::TypeError::New(env, opName + ": missing required argument '" + args[i].name() + "'");
    }
    try {
      stack.push_back(ToIValue(env, v, args[i].real_type(), args[i], opName));
    } catch (const c10::Error& e) {
      throw TorchError(env, opName + ": argument '" + args[i].name() + "'", e.what_without_backtrace());
    }
  }
  try {
    AsyncSignalsBlocked quiet;
    op.callBoxed(&stack);
  } catch (const c10::Error& e) {
    throw TorchError(env, opName, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw TorchError(env, opName, e.what());
  }
  if (stack.size() == 1) return FromIValue(env, stack[0]);
  auto arr = Napi::Array::New(env, stack.size());
  for (size_t i = 0; i < stack.size(); i++) arr.Set(i, FromIValue(env, stack[i]));
  return arr;
}

// Wrap a function body so that libtorch errors become JS errors carrying `what`.
template <typename F>
Napi::Value Guard(Napi::Env env, const char* what, F&& f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw TorchError(env, what, e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw TorchError(env, what, e.what());
  }
}

// ---- tensor metadata and lifetime ----
Napi::Value Meta(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const at::Tensor& t = Unwrap(info[0], "meta");
  auto arr = Napi::Array::New(env);
  arr.Set(0u, Napi::Number::New(env, CodeFromDtype(t.scalar_type())));
  arr.Set(1u, Napi::String::New(env, DeviceString(t.device())));
  auto sizes = t.sizes();
  auto shape = Napi::Array::New(env, sizes.size());
  for (size_t i = 0; i < sizes.size(); i++) shape.Set(i, Napi::Number::New(env, static_cast<double>(sizes[i])));
  arr.Set(2u, shape);
  return arr;
}

Napi::Value Dispose(const Napi::CallbackInfo& info) {
  if (info[0].IsExternal()) {
    TensorBox* box = info[0].As<Napi::External<TensorBox>>().Data();
    if (box && box->magic == kTensorMagic) box->release();
  }
  return info.Env().Undefined();
}

Napi::Value IsAlive(const Napi::CallbackInfo& info) {
  TensorBox* box = info[0].IsExternal() ? info[0].As<Napi::External<TensorBox>>().Data() : nullptr;
  bool alive = box && box->magic == kTensorMagic && box->alive;
  return Napi::Boolean::New(info.Env(), alive);
}

Napi::Value LiveCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(g_live.load()));
}

Napi::Value Share(const Napi::CallbackInfo& info) {  // a second handle to the same tensor
  return Wrap(info.Env(), Unwrap(info[0], "share"));
}

Napi::Value SameStorage(const Napi::CallbackInfo& info) {
  const at::Tensor& a = Unwrap(info[0], "sameTensor");
  const at::Tensor& b = Unwrap(info[1], "sameTensor");
  return Napi::Boolean::New(info.Env(), a.unsafeGetTensorImpl() == b.unsafeGetTensorImpl());
}

// ---- data in and out ----
// fromBuffer(typedArray, shape, dtypeCode): one memcpy into libtorch-owned memory.
Napi::Value FromBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "fromBuffer", [&]() -> Napi::Value {
    auto ta = info[0].As<Napi::TypedArray>();
    auto shapeArr = info[1].As<Napi::Array>();
    auto dtype = DtypeFromCode(env, info[2].As<Napi::Number>().Int32Value());
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (uint32_t i = 0; i < shapeArr.Length(); i++) {
      int64_t d = ExactInt(env, shapeArr.Get(i), "fromBuffer: shape");
      if (d < 0) throw Napi::RangeError::New(env, "fromBuffer: negative dimension in shape");
      shape.push_back(d);
      numel *= d;
    }
    size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
    size_t have = ta.ByteLength();
    if (bytes != have) {
      throw Napi::RangeError::New(env, "fromBuffer: shape needs " + std::to_string(bytes) + " bytes, buffer has " + std::to_string(have));
    }
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    if (bytes) {
      auto* src = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      std::memcpy(t.data_ptr(), src, bytes);
    }
    return Wrap(env, t);
  });
}

// toBuffer(handle): copies to a fresh ArrayBuffer (moves to CPU and makes contiguous first).
Napi::Value ToBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "toBuffer", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "toBuffer");
    c10::NoGradGuard noGrad;
    t = t.detach().to(at::kCPU).contiguous();
    size_t bytes = t.numel() * t.element_size();
    auto buf = Napi::ArrayBuffer::New(env, bytes);
    if (bytes) std::memcpy(buf.Data(), t.data_ptr(), bytes);
    return buf;
  });
}

// view(handle): zero-copy ArrayBuffer over a contiguous CPU tensor's memory; keeps it alive.
Napi::Value DataView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "dataView", [&]() -> Napi::Value {
    const at::Tensor& t = Unwrap(info[0], "dataView");
    if (!t.device().is_cpu() || !t.is_contiguous()) {
      throw Napi::Error::New(env, "dataView: needs a contiguous CPU tensor");
    }
    auto* keep = new at::Tensor(t);
    size_t bytes = t.numel() * t.element_size();
    return Napi::ArrayBuffer::New(env, keep->data_ptr(), bytes,
                                  [](Napi::Env, void*, at::Tensor* k) { delete k; }, keep);
  });
}

// ---- autograd ----
Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "requiresGrad", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "requiresGrad");
    t.set_requires_grad(info[1].As<Napi::Boolean>().Value());
    return env.Undefined();
  });
}

Napi::Value RequiresGrad(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Unwrap(info[0], "requiresGrad").requires_grad());
}

Napi::Value IsLeaf(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), Unwrap(info[0], "isLeaf").is_leaf());
}

Napi::Value Grad(const Napi::CallbackInfo& info) {
  return Wrap(info.Env(), Unwrap(info[0], "grad").grad());
}

Napi::Value SetGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "setGrad", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "setGrad");
    if (info[1].IsNull() || info[1].IsUndefined()) t.mutable_grad() = at::Tensor();
    else t.mutable_grad() = Unwrap(info[1], "setGrad");
    return env.Undefined();
  });
}

Napi::Value Backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "backward", [&]() -> Napi::Value {
    auto outs = info[0].As<Napi::Array>();
    std::vector<at::Tensor> tensors, grads;
    for (uint32_t i = 0; i < outs.Length(); i++) tensors.push_back(Unwrap(outs.Get(i), "backward"));
    if (info[1].IsArray()) {
      auto g = info[1].As<Napi::Array>();
      for (uint32_t i = 0; i < g.Length(); i++) {
        Napi::Value gv = g.Get(i);
        grads.push_back(gv.IsNull() ? at::Tensor() : Unwrap(gv, "backward"));
      }
    }
    bool retain = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
    AsyncSignalsBlocked quiet;
    torch::autograd::backward(tensors, grads, retain ? c10::optional<bool>(true) : c10::nullopt, false);
    return env.Undefined();
  });
}

Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  bool prev = c10::GradMode::is_enabled();
  c10::GradMode::set_enabled(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), prev);
}

// ---- autocast (mixed precision) ----
// setAutocast(deviceType "cpu"|"cuda", enabled, dtypeCode) -> previous enabled
Napi::Value SetAutocast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = info[0].As<Napi::String>().Utf8Value();
  bool enabled = info[1].As<Napi::Boolean>().Value();
  auto dtype = DtypeFromCode(env, info[2].As<Napi::Number>().Int32Value());
  bool prev;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  auto type = dev == "cuda" ? at::kCUDA : at::kCPU;
  prev = at::autocast::is_autocast_enabled(type);
  at::autocast::set_autocast_enabled(type, enabled);
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (dev == "cuda") {
    prev = at::autocast::is_enabled();
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    prev = at::autocast::is_cpu_enabled();
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
  if (!enabled) at::autocast::clear_cache();
  return Napi::Boolean::New(env, prev);
}

// ---- random state ----
Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  torch::manual_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

Napi::Value GetRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "getRngState", [&]() -> Napi::Value {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return Wrap(env, gen.get_state());
  });
}

Napi::Value SetRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "setRngState", [&]() -> Napi::Value {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(Unwrap(info[0], "setRngState"));
    return env.Undefined();
  });
}

Napi::Value GetCudaRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "getCudaRngState", [&]() -> Napi::Value {
    auto gen = CudaDefaultGenerator(info[0].As<Napi::Number>().Int32Value());
    std::lock_guard<std::mutex> lock(gen.mutex());
    return Wrap(env, gen.get_state());
  });
}

Napi::Value SetCudaRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "setCudaRngState", [&]() -> Napi::Value {
    auto gen = CudaDefaultGenerator(info[0].As<Napi::Number>().Int32Value());
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(Unwrap(info[1], "setCudaRngState"));
    return env.Undefined();
  });
}

// ---- runtime ----
Napi::Value RuntimeInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
  o.Set("torchVersion", TORCH_VERSION);
  o.Set("cudaAvailable", torch::cuda::is_available());
  o.Set("cudaDeviceCount", static_cast<double>(torch::cuda::device_count()));
  o.Set("numThreads", static_cast<double>(at::get_num_threads()));
  o.Set("cudnnBenchmark", at::globalContext().benchmarkCuDNN());
  // oneDNN (MKLDNN) compiled in and enabled: conv2d may then call it directly (ops/conv.ts).
  o.Set("mkldnn", at::hasMKLDNN() && at::globalContext().userEnabledMkldnn());
  // kshare::pointwise_conv2d is built only against oneDNN's headers (native/pointwise_conv.cc).
  o.Set("pointwiseKernel", c10::Dispatcher::singleton().findSchema({"kshare::pointwise_conv2d", ""}).has_value());
  // kshare's own kernel threads (native/cpu_thread_pool.cc).
  o.Set("cpuPoolWorkers", static_cast<double>(kshare::CpuPoolWorkers()));
  o.Set("cpuPoolJobs", static_cast<double>(kshare::CpuPoolJobs()));
  o.Set("cpuPoolFallbacks", static_cast<double>(kshare::CpuPoolFallbacks()));
  o.Set("cpuPoolSpinUs", static_cast<double>(kshare::PoolSpinLimit().count()));
  o.Set("cpuPoolWakes", static_cast<double>(kshare::CpuPoolWakes()));
  o.Set("cpuPoolSpreads", static_cast<double>(kshare::CpuPoolSpreads()));
  // How far ahead the GELU/BatchNorm row kernels prefetch (native/fused_gelu_bn.cc).
  o.Set("rowPrefetchFloats", static_cast<double>(kshare_gbn::RowPrefetchFloats()));
  // The 1x1 convolution's products on AMX tiles (native/amx_gemm.cc).
  o.Set("amx", kshare_amx::Enabled());
  o.Set("amxSupported", kshare_amx::Supported());
  o.Set("amxProducts", static_cast<double>(kshare_amx::Products()));
  o.Set("amxTileProducts", static_cast<double>(kshare_amx::TileProducts()));
  o.Set("amxProductNs", static_cast<double>(kshare_amx::ProductNanoseconds()));
  // ConvMixer block backwards that took their row-sum hand-off (native/conv_gelu_bn.cc).
  o.Set("blockRowSumHandOffs", static_cast<double>(kshare_block::RowSumHandOffs()));
  o.Set("blockRunLazyInputs", static_cast<double>(kshare_block::RunLazyInputs()));
  o.Set("blockRunRowSumHandOffs", static_cast<double>(kshare_block::RunRowSumHandOffs()));
  o.Set("blockRunDeferredOutputs", static_cast<double>(kshare_block::RunDeferredOutputs()));
  return o;
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  at::set_num_threads(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

// glibc's malloc hands blocks above its mmap threshold back to the kernel when freed, and a
// training step frees and reallocates every activation, so each step page-faults its
// activations back in (about 15% of a ConvMixer-64/4 step's CPU time here). Raising the mmap
// and trim thresholds keeps freed memory in the heap for reuse. Returns false where the
// allocator is not glibc's or refused a value.
Napi::Value SetMallocThresholds(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  const int mmapThreshold = info[0].As<Napi::Number>().Int32Value(), trimThreshold = info[1].As<Napi::Number>().Int32Value();
  const bool ok = mallopt(M_MMAP_THRESHOLD, mmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, trimThreshold) == 1;
  return Napi::Boolean::New(info.Env(), ok);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Value SetCudnnBenchmark(const Napi::CallbackInfo& info) {
  at::globalContext().setBenchmarkCuDNN(info[0].As<Napi::Boolean>().Value());
  return info.Env().Undefined();
}

// TensorFloat-32 in cuDNN convolutions and cuBLAS products (libtorch's defaults: on for cuDNN,
// off for cuBLAS); tests turn it off to compare CUDA with CPU float32 closely.
Napi::Value SetAllowTF32(const Napi::CallbackInfo& info) {
  const bool on = info[0].As<Napi::Boolean>().Value();
  at::globalContext().setAllowTF32CuDNN(on);
  at::globalContext().setAllowTF32CuBLAS(on);
  return info.Env().Undefined();
}

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Guard(env, "cudaSynchronize", [&]() -> Napi::Value {
    if (torch::cuda::is_available()) torch::cuda::synchronize();
    return env.Undefined();
  });
}

Napi::Value SetWarningHandler(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnvData* data = env.GetInstanceData<EnvData>();
  if (info[0].IsFunction()) data->warningCallback = Napi::Persistent(info[0].As<Napi::Function>());
  else data->warningCallback.Reset();
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Init runs on the environment's own thread: its warnings go to its collector.
#if TORCH_VERSION_MAJOR >= 2
  c10::WarningUtils::set_warning_handler(&t_warnings);
#else
  c10::Warning::set_warning_handler(&t_warnings);
#endif
  env.SetInstanceData(new EnvData());  // deleted with the environment (node-addon-api's default finalizer)
  kshare::RegisterCpuAllocator(env, exports);  // before any tensor is allocated
  // Every entry point is guarded: an exception escaping into N-API would abort the process.
  auto fn = [&](const char* name, Napi::Value (*f)(const Napi::CallbackInfo&)) {
    exports.Set(name, Napi::Function::New(
                          env, [f, name](const Napi::CallbackInfo& info) -> Napi::Value {
                            // Warnings raised during the call go to the JS handler once it has returned (or thrown).
                            Napi::Value result;
                            try {
                              result = Guard(info.Env(), name, [&]() { return f(info); });
                            } catch (...) {
                              FlushWarnings(info.Env());
                              throw;
                            }
                            FlushWarnings(info.Env());
                            return result;
                          },
                          name));
  };
  fn("opId", OpId);
  fn("opSchema", OpSchema);
  fn("call", Call);
  fn("meta", Meta);
  fn("dispose", Dispose);
  fn("isAlive", IsAlive);
  fn("liveCount", LiveCount);
  fn("share", Share);
  fn("sameTensor", SameStorage);
  fn("fromBuffer", FromBuffer);
  fn("toBuffer", ToBuffer);
  fn("dataView", DataView);
  fn("setRequiresGrad", SetRequiresGrad);
  fn("requiresGrad", RequiresGrad);
  fn("isLeaf", IsLeaf);
  fn("grad", Grad);
  fn("setGrad", SetGrad);
  fn("backward", Backward);
  fn("setGradEnabled", SetGradEnabled);
  fn("setAutocast", SetAutocast);
  fn("manualSeed", ManualSeed);
  fn("getRngState", GetRngState);
  fn("setRngState", SetRngState);
  fn("getCudaRngState", GetCudaRngState);
  fn("setCudaRngState", SetCudaRngState);
  fn("newGenerator", NewGenerator);
  fn("generatorState", GeneratorState);
  fn("runtimeInfo", RuntimeInfo);
  fn("setNumThreads", SetNumThreads);
  fn("opCount", OpCount);
  fn("setCudnnBenchmark", SetCudnnBenchmark);
  fn("setAllowTF32", SetAllowTF32);
  fn("setMallocThresholds", SetMallocThresholds);
  fn("cudaSynchronize", CudaSynchronize);
  fn("setWarningHandler", SetWarningHandler);
  kshare::RegisterDistributed(env, exports);
  return exports;
}

}  // namespace

namespace kshare {
Napi::Value WrapTensor(Napi::Env env, at::Tensor t) { return Wrap(env, std::move(t)); }
const at::Tensor& UnwrapTensor(const Napi::Value& v, const char* what) { return Unwrap(v, what); }
}  // namespace kshare

NODE_API_MODULE(kshare, Init)
