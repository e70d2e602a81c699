// Pieces of the addon that more than one source file needs.
#pragma once
#define NAPI_VERSION 8
#include <napi.h>

#include <ATen/ATen.h>

namespace kshare {

// Tensor handles (defined in kshare.cc).
Napi::Value WrapTensor(Napi::Env env, at::Tensor t);
const at::Tensor& UnwrapTensor(const Napi::Value& v, const char* what);

// Process groups over c10d (defined in distributed.cc).
void RegisterDistributed(Napi::Env env, Napi::Object exports);

// The caching CPU allocator, installed into libtorch when the addon loads (cpu_allocator.cc).
void RegisterCpuAllocator(Napi::Env env, Napi::Object exports);

}  // namespace kshare
