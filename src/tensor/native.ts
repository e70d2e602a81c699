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
  setMallocThresholds(mmapBytes: number, trimBytes: number): boolean;
  cudaSynchronize(): void;
  /** Receives libtorch's warnings (shortened), each after the call that raised it; null: collect silently. */
  setWarningHandler(fn: ((message: string) => void) | null): void;
}

function locateAddon(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [
    process.env.KSHARE_ADDON,
    // src/tensor -> repo root, and dist/src/tensor -> repo root
    path.resolve(here, '../../native/build/kshare.node'),
    path.resolve(here, '../../../native/build/kshare.node'),
  ].filter((p): p is string => !!p);
  for (const c of candidates) if (existsSync(c)) return c;
  throw new Error(
    `kshare: native addon not found (looked in ${candidates.join(', ')}). ` +
      'Build it with `npm run build:native` (needs Debian libtorch-dev, or LIBTORCH_INCLUDE/LIBTORCH_LIB).',
  );
}

// libgomp reads this when the addon loads. Its default (spin-waiting) makes libtorch's thread
// pool collapse when any other process competes for the cores: measured 76-108 img/s with
// 2 threads against 214-243 with PASSIVE on the 2-core development machine. On a quiet machine
// spinning is faster for a bare training step (ConvMixer-64/4 shared, batch 32, 2 threads:
// 15 ms ACTIVE, 17-18 ms with GOMP_SPINCOUNT 1e4-3e5, 26 ms PASSIVE) but lost with one competing
// process (58-63 ms against 51), and the demo's 2-thread training (with its data pipeline)
// measured the same either way, so PASSIVE stays the default. Setting OMP_WAIT_POLICY or
// GOMP_SPINCOUNT overrides it.
if (process.env.OMP_WAIT_POLICY === undefined && process.env.GOMP_SPINCOUNT === undefined) process.env.OMP_WAIT_POLICY = 'PASSIVE';

export const native: NativeBinding = createRequire(import.meta.url)(locateAddon()) as NativeBinding;
