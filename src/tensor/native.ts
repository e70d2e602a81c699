// The typed face of the native addon (native/kshare.cc). Nothing else imports the addon.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** Opaque handle to a libtorch tensor owned by the addon. */
export type Handle = { readonly __handle: unique symbol };
/** Opaque handle to a libtorch random generator. */
export type GeneratorHandle = { readonly __generator: unique symbol };
/** Argument values the addon converts according to the operator's schema. */
export type KernelArg =
  Handle | GeneratorHandle | number | boolean | string | null | undefined | readonly number[] | readonly boolean[] | readonly (Handle | null)[];

export interface RuntimeInfo {
  torchVersion: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  numThreads: number;
  cudnnBenchmark: boolean;
  /** oneDNN (MKLDNN) compiled into this libtorch and enabled. */
  mkldnn: boolean;
  /** kshare's 1x1 convolution operator (native/pointwise_conv.cc) is built in (needs oneDNN's headers). */
  pointwiseKernel: boolean;
  /** Worker threads of kshare's own pool for its CPU kernels (native/cpu_thread_pool.cc): 0 before its first parallel call, then the thread count less one. */
  cpuPoolWorkers: number;
  /** Parallel kernel calls the pool has run (KSHARE_CPU_POOL=0 runs them on libgomp's threads instead). */
  cpuPoolJobs: number;
  /** Parallel kernel calls that found another JavaScript thread (a worker_threads Worker) using the pool and ran on libgomp's threads instead. */
  cpuPoolFallbacks: number;
  /** How long the pool's idle threads spin for the next parallel call before they sleep, in microseconds (KSHARE_CPU_SPIN_US; default 50). */
  cpuPoolSpinUs: number;
  /** Parallel kernel calls that found a pool worker asleep (idle for longer than cpuPoolSpinUs) and had to wake it. */
  cpuPoolWakes: number;
  /** Pool workers found sharing a CPU with the calling thread or another worker after a call and moved to the CPUs nobody else was on (KSHARE_CPU_SPREAD=0 leaves them where the scheduler puts them). */
  cpuPoolSpreads: number;
  /** How many floats ahead the GELU/BatchNorm row kernels prefetch their rows (KSHARE_ROW_PREFETCH; default 512, 0 = none). */
  rowPrefetchFloats: number;
  /** kshare's 1x1 convolution runs its NCHW products on AMX tiles (native/amx_gemm.cc), and its 3x3 convolution where it applies (native/amx_conv3x3.cc): the CPU has AMX-BF16, the OS allows it, and neither KSHARE_NATIVE_AMX=0 nor a KSHARE_NATIVE_ISA cap turns it off. */
  amx: boolean;
  /** The CPU has AMX-BF16 and the OS allows it (amx without the environment switches): conv2d's route to kshare's 3x3 convolution (native/amx_conv3x3.cc) asks this once. */
  amxSupported: boolean;
  /** Matrix products run on AMX tiles so far in this process. */
  amxProducts: number;
  /** The tile products (bfloat16 16 x 16 x 32 dot-product instructions) those matrix products issued so far. */
  amxTileProducts: number;
  /** Nanoseconds spent in those matrix products so far (wall time, summed over threads): amxProductNs / amxTileProducts is the tile unit's speed where they ran (in bench/cpu-kernels.ts's rounds on the development Xeon, 6.74-9.8 ns a tile product when the host was quiet (runs HA-HD, 2026-12-06), up to 17.94 when another guest shared the core (run GC)). */
  amxProductNs: number;
  /** ConvMixer block backwards (kshare::convmixer_block, NCHW training) whose 1x1 half summed the depthwise half's BatchNorm rows as it wrote them, so far in this process. */
  blockRowSumHandOffs: number;
  /** Blocks of a training run (kshare::convmixer_training_blocks) that read their input from the previous block's kept GELU output and BatchNorm coefficients, the input never stored, so far in this process. */
  blockRunLazyInputs: number;
  /** Block backwards of a training run whose 1x1 BatchNorm took its row sums from the next block's input gradient, summed as it was written, so far in this process. */
  blockRunRowSumHandOffs: number;
  /** Blocks of a training run whose residual half's output (the 1x1's input) was written image by image just before the 1x1 product read it, from cache, so far in this process. */
  blockRunDeferredOutputs: number;
}

/** State of kshare's caching CPU allocator (native/cpu_allocator.cc). */
export interface CpuAllocatorInfo {
  /** false with KSHARE_CPU_ALLOCATOR=system: libtorch's own allocator is in use. */
  installed: boolean;
  /** Freed blocks kept for reuse. */
  cachedBytes: number;
  /** All blocks the cache has mapped: in use plus cached. */
  mappedBytes: number;
  /** Large requests served from the cache, and those that mapped new memory. */
  hits: number;
  misses: number;
  /** Most bytes kept cached (KSHARE_CPU_CACHE_MB). */
  capBytes: number;
  /** Requests smaller than this go to malloc. */
  minCachedBytes: number;
  /** Blocks of 2 MiB and more start on a huge page and are marked for transparent huge pages (KSHARE_CPU_HUGEPAGES=1; off by default). */
  hugePages: boolean;
}

/** Opaque handles of the c10d bindings (native/distributed.cc). */
export type GroupHandle = { readonly __group: unique symbol };
export type WorkHandle = { readonly __work: unique symbol };
export type BucketerHandle = { readonly __bucketer: unique symbol };

export interface DistInitOptions {
  host: string;
  port: number;
  rank: number;
  worldSize: number;
  timeoutMs: number;
  heartbeatMs: number;
  /** Address the Gloo transport binds to (default: this host's name). */
  deviceHost?: string;
  /** Network interface for Gloo (GLOO_SOCKET_IFNAME). */
  ifname?: string;
  /** Also create an NCCL group for CUDA tensors (only in builds with NCCL). */
  nccl?: boolean;
}

/** Present only when the addon was built with c10d Gloo (see native/build.sh). */
export interface DistributedBinding {
  distInit(o: DistInitOptions): Promise<GroupHandle>;
  distDestroy(g: GroupHandle): void;
  distInfo(g: GroupHandle): { rank: number; worldSize: number; collectives: number; nccl: boolean };
  distAllReduce(g: GroupHandle, t: Handle, op: 'sum' | 'avg'): WorkHandle;
  distBroadcast(g: GroupHandle, t: Handle, root: number): WorkHandle;
  distBarrier(g: GroupHandle): WorkHandle;
  workWait(w: WorkHandle, timeoutMs?: number): void;
  workWaitAsync(w: WorkHandle, timeoutMs?: number): Promise<void>;
  workIsCompleted(w: WorkHandle): boolean;
  bucketerNew(g: GroupHandle, params: Handle[], bucketCapBytes: number): BucketerHandle;
  bucketerInfo(b: BucketerHandle): { bucketBytes: number[]; bytes: number };
  bucketerPrepare(b: BucketerHandle): void;
  bucketerFinish(b: BucketerHandle, timeoutMs?: number): { waitMs: number; launchedEarly: number; buckets: number };
  bucketerDestroy(b: BucketerHandle): void;
}

export interface NativeBinding extends Partial<DistributedBinding> {
  distAvailable(): { gloo: boolean; nccl: boolean };
  opId(name: string, overload: string): number;
  opSchema(id: number): string;
  /** Operators resolved in this process so far (ids are shared by every JavaScript thread). */
  opCount(): number;
  call(id: number, args: KernelArg[]): unknown;
  meta(h: Handle): [dtypeCode: number, device: string, shape: number[]];
  dispose(h: Handle): void;
  isAlive(h: Handle): boolean;
  liveCount(): number;
  share(h: Handle): Handle;
  sameTensor(a: Handle, b: Handle): boolean;
  fromBuffer(data: ArrayBufferView, shape: number[], dtypeCode: number): Handle;
  toBuffer(h: Handle): ArrayBuffer;
  dataView(h: Handle): ArrayBuffer;
  setRequiresGrad(h: Handle, value: boolean): void;
  requiresGrad(h: Handle): boolean;
  isLeaf(h: Handle): boolean;
  grad(h: Handle): Handle | null;
  setGrad(h: Handle, g: Handle | null): void;
  backward(outputs: Handle[], grads: (Handle | null)[] | null, retainGraph: boolean): void;
  setGradEnabled(enabled: boolean): boolean;
  setAutocast(deviceType: 'cpu' | 'cuda', enabled: boolean, dtypeCode: number): boolean;
  manualSeed(seed: number): void;
  getRngState(): Handle;
  setRngState(state: Handle): void;
  getCudaRngState(device: number): Handle;
  setCudaRngState(device: number, state: Handle): void;
  newGenerator(device: string, seed: number): GeneratorHandle;
  generatorState(g: GeneratorHandle, state?: Handle): Handle | undefined;
  runtimeInfo(): RuntimeInfo;
  setNumThreads(n: number): void;
  setCudnnBenchmark(on: boolean): void;
  setAllowTF32(on: boolean): void;
  setMallocThresholds(mmapBytes: number, trimBytes: number): boolean;
  cpuAllocatorInfo(): CpuAllocatorInfo;
  emptyCpuCache(): void;
  cudaSynchronize(): void;
  /** Receives libtorch's warnings (shortened), each after the call that raised it; null: collect silently. */
  setWarningHandler(fn: ((message: string) => void) | null): void;
}

function locateAddon(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // An explicit build (e.g. an A/B of two builds) must never fall back silently to the default one.
  const chosen = process.env.KSHARE_ADDON;
  if (chosen !== undefined && chosen !== '') {
    if (!existsSync(chosen))
      throw new Error(
        `kshare: KSHARE_ADDON is '${chosen}', which does not exist; point it at a built kshare.node (native/build/kshare.node after \`npm run build:native\`) or unset it`,
      );
    // Relative to the working directory, as the check above (require would take a bare
    // relative path for a package name).
    return path.resolve(chosen);
  }
  const candidates = [
    // src/tensor -> repo root, and dist/src/tensor -> repo root
    path.resolve(here, '../../native/build/kshare.node'),
    path.resolve(here, '../../../native/build/kshare.node'),
  ];
  for (const c of candidates) if (existsSync(c)) return c;
  throw new Error(
    `kshare: native addon not found (looked in ${candidates.join(', ')}). ` +
      'Build it with `npm run build:native` (needs Debian libtorch-dev, or LIBTORCH_INCLUDE/LIBTORCH_LIB).',
  );
}

// libgomp reads this when the addon loads: how long an idle OpenMP worker spins before it sleeps.
// Every parallel region wakes the workers, and a training step runs ~150 of them, so a worker
// that has gone to sleep (a futex wake: tens of microseconds on a VM) can cost more than the
// region's work. libgomp's default (300,000 spins, about a millisecond) collapses when other
// processes compete for the cores (76-108 against 214-243 img/s measured with 2 threads);
// never spinning (PASSIVE, kshare's default before 2026-12-02) wastes the second thread. A short
// spin sits between. `node dist/bench/wait-policy.js` (bench/results/wait-policy.json, 2-core
// machine, 2 threads, medians of 3 alternating rounds), PASSIVE against this default:
// ConvMixer-64/4 shared step quiet 17.5 / 13.6 ms, beside two busy processes 39.7 / 28.1, beside
// one 24.1 / 28.0, two such jobs at once 24.0 / 28.1; batch-1 ConvMixer-256/16 inference quiet
// 15.7 / 13.2, beside one busy process 19.7 / 24.8. So it is faster on a machine of one's own and
// up to ~25% slower sharing cores with one other busy process: set OMP_WAIT_POLICY=PASSIVE there.
// Setting OMP_WAIT_POLICY or GOMP_SPINCOUNT overrides it.
export const DEFAULT_GOMP_SPINCOUNT = '1000';
if (process.env.OMP_WAIT_POLICY === undefined && process.env.GOMP_SPINCOUNT === undefined) process.env.GOMP_SPINCOUNT = DEFAULT_GOMP_SPINCOUNT;

// Read by native/cpu_allocator.cc when the addon loads; checked here so a typo fails loudly.
const allocatorMode = process.env.KSHARE_CPU_ALLOCATOR;
if (allocatorMode !== undefined && allocatorMode !== 'kshare' && allocatorMode !== 'system')
  throw new Error(`kshare: KSHARE_CPU_ALLOCATOR must be 'kshare' (the default) or 'system', got '${allocatorMode}'`);
const hugePages = process.env.KSHARE_CPU_HUGEPAGES;
if (hugePages !== undefined && hugePages !== '0' && hugePages !== '1')
  throw new Error(`kshare: KSHARE_CPU_HUGEPAGES must be '0' (the default) or '1' (large blocks on transparent huge pages), got '${hugePages}'`);
const spinUs = process.env.KSHARE_CPU_SPIN_US;
if (spinUs !== undefined && !/^\d{1,7}$/.test(spinUs))
  throw new Error(
    `kshare: KSHARE_CPU_SPIN_US must be a whole number of microseconds (0 to 9999999; default 50) that kshare's kernel threads spin before they sleep, got '${spinUs}'`,
  );
const rowPrefetch = process.env.KSHARE_ROW_PREFETCH;
if (rowPrefetch !== undefined && (!/^\d{1,5}$/.test(rowPrefetch) || Number(rowPrefetch) > 65536))
  throw new Error(
    `kshare: KSHARE_ROW_PREFETCH must be a whole number of floats (0 to 65536; default 512) that kshare's GELU/BatchNorm row kernels fetch ahead, 0 for none, got '${rowPrefetch}'`,
  );
const cacheMb = process.env.KSHARE_CPU_CACHE_MB;
if (cacheMb !== undefined && !/^\d{1,7}$/.test(cacheMb))
  throw new Error(`kshare: KSHARE_CPU_CACHE_MB must be a whole number of MiB (0 to 9999999; default 1024), got '${cacheMb}'`);

export const native: NativeBinding = createRequire(import.meta.url)(locateAddon()) as NativeBinding;
