// Process-wide settings of the compute runtime: threads, cuDNN, RNG state, mixed precision.
import { native, type CpuAllocatorInfo, type RuntimeInfo } from './native.js';
import { dtypeCode, type DType } from './dtype.js';
import { Tensor, wrap } from './tensor.js';
import { isTracing } from './trace.js';

export function runtimeInfo(): RuntimeInfo {
  return native.runtimeInfo();
}

export function cudaAvailable(): boolean {
  return native.runtimeInfo().cudaAvailable;
}

export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`setNumThreads: n must be a positive integer, got ${n}`);
  native.setNumThreads(n);
}

/**
 * Keeps freed activation memory in the process heap instead of returning it to the kernel
 * (glibc malloc's mmap threshold 256 MiB, trim threshold 1 GiB): a training step frees and
 * reallocates every activation, and without this each step page-faults them back in (~15% of
 * a small ConvMixer's step on CPU). Since kshare's caching CPU allocator (cpuAllocatorInfo)
 * keeps tensor blocks of 256 KiB and more itself, this matters for smaller blocks, other native
 * memory, and runs with KSHARE_CPU_ALLOCATOR=system. Process-wide, so the CLI calls it, not the
 * library. Does nothing, and returns false, when MALLOC_MMAP_THRESHOLD_ or
 * MALLOC_TRIM_THRESHOLD_ is set (the user's choice wins), KSHARE_MALLOC_TUNING=0, or the
 * allocator is not glibc's.
 */
export function retainFreedMemory(): boolean {
  const env = process.env;
  if (env.MALLOC_MMAP_THRESHOLD_ !== undefined || env.MALLOC_TRIM_THRESHOLD_ !== undefined || env.KSHARE_MALLOC_TUNING === '0') return false;
  return native.setMallocThresholds(256 << 20, 1 << 30);
}

export type { CpuAllocatorInfo };

/**
 * kshare's CPU allocator (native/cpu_allocator.cc), installed into libtorch when the addon loads:
 * blocks of 256 KiB and more are kept for reuse when freed (up to KSHARE_CPU_CACHE_MB, default
 * 1024 MiB), so training steps do not page-fault their activations back in. KSHARE_CPU_ALLOCATOR=
 * system keeps libtorch's allocator.
 */
export function cpuAllocatorInfo(): CpuAllocatorInfo {
  return native.cpuAllocatorInfo();
}

/** Returns the CPU allocator's cached free blocks to the operating system (tensors in use stay). */
export function emptyCpuCache(): void {
  native.emptyCpuCache();
}

/** cuDNN autotuning: picks the fastest convolution algorithm per shape. */
export function setCudnnBenchmark(on: boolean): void {
  native.setCudnnBenchmark(on);
}

/**
 * TensorFloat-32 in CUDA convolutions and matrix products (libtorch's defaults: on for cuDNN,
 * off for cuBLAS, as PyTorch). Off gives float32 results close to the CPU's; no effect on CPU.
 */
export function setAllowTF32(on: boolean): void {
  native.setAllowTF32(on);
}

/** Waits for queued GPU work (for timing); a no-op without CUDA. */
export function synchronize(): void {
  native.cudaSynchronize();
}

/** Snapshot of the global random streams (CPU, and CUDA device 0 when present). */
export interface RngState {
  cpu: Tensor;
  cuda: Tensor | null;
}

export function getRngState(): RngState {
  return { cpu: wrap(native.getRngState()), cuda: cudaAvailable() ? wrap(native.getCudaRngState(0)) : null };
}

export function setRngState(s: RngState): void {
  native.setRngState(s.cpu.handle);
  if (s.cuda && cudaAvailable()) native.setCudaRngState(0, s.cuda.handle);
}

export interface AutocastOptions {
  device: 'cpu' | 'cuda';
  /** float16 or bfloat16 on CUDA; bfloat16 on CPU. */
  dtype: DType;
  enabled?: boolean;
}

/**
 * Runs fn with autocast: eligible ops (convolutions, matmuls) run in a lower precision,
 * precision-sensitive ones (softmax, losses, norms) in float32, as in torch.autocast.
 */
export function autocast<T>(o: AutocastOptions, fn: () => T): T {
  if (o.enabled === false) return fn();
  if (o.device !== 'cpu' && o.device !== 'cuda') throw new TypeError(`autocast: device must be 'cpu' or 'cuda', got '${o.device}'`);
  if (o.device === 'cpu' && o.dtype !== 'bfloat16') throw new TypeError(`autocast: on CPU only bfloat16 is supported, got ${o.dtype}`);
  if (o.dtype !== 'float16' && o.dtype !== 'bfloat16') throw new TypeError(`autocast: dtype must be float16 or bfloat16, got ${o.dtype}`);
  const prev = native.setAutocast(o.device, true, dtypeCode(o.dtype));
  autocastDepth[o.device]++;
  try {
    return fn();
  } finally {
    autocastDepth[o.device]--;
    native.setAutocast(o.device, prev, dtypeCode(o.dtype));
  }
}

const autocastDepth = { cpu: 0, cuda: 0 };

/** Whether `autocast` is active for the device (kshare's own kernels step aside then). */
export function autocastActive(device: 'cpu' | 'cuda'): boolean {
  return autocastDepth[device] > 0;
}

/**
 * Whether kshare's own CPU kernels (native/, e.g. the fused bias + GELU + BatchNorm) may be
 * used where they apply. `KSHARE_NATIVE_KERNELS=0` forces libtorch's ops everywhere (for
 * comparisons and as an escape hatch); read on every call so it can be flipped at run time.
 */
export function nativeKernelsEnabled(): boolean {
  return process.env.KSHARE_NATIVE_KERNELS !== '0';
}

/**
 * Whether kshare's CPU kernels may replace libtorch's ops right now: enabled, no CPU autocast
 * (they are float32 only), and no ONNX trace running (the exporter maps libtorch's op fronts).
 * Each kernel's front adds its own shape and dtype conditions.
 */
export function cpuKernelsAllowed(): boolean {
  return nativeKernelsEnabled() && !autocastActive('cpu') && !isTracing();
}
