// A c10d process group (TCPStore rendezvous; Gloo for CPU tensors, NCCL for CUDA tensors when
// the addon was built with it): PyTorch's own collectives, typed. Every wait has a deadline, and a
// failure names the rank at fault (see native/distributed.cc).
import { native, type DistributedBinding, type GroupHandle, type WorkHandle } from '../tensor/native.js';
import type { Tensor } from '../tensor/index.js';

export interface ProcessGroupOptions {
  /** Address of rank 0, which hosts the rendezvous store (MASTER_ADDR). */
  host: string;
  /** Port of the store on rank 0 (MASTER_PORT). */
  port: number;
  rank: number;
  worldSize: number;
  /** Rendezvous and every collective fail with an error after this long (default 60 s). */
  timeoutMs?: number;
  /** How often each rank tells the store it is alive (default 1 s); used to name a failed rank. */
  heartbeatMs?: number;
  /** Network interface for the Gloo transport (as GLOO_SOCKET_IFNAME in PyTorch). */
  ifname?: string;
  /** Use NCCL for CUDA tensors when this build has it (default true). */
  nccl?: boolean;
}

/** The c10d functions of the addon, or an error saying how to get them. */
export function distributedBinding(): DistributedBinding {
  if (!native.distAvailable().gloo || !native.distInit) {
    throw new Error(
      'this kshare addon was built without c10d Gloo, so distributed training is unavailable: install libgloo-dev (apt) and rebuild with `bash native/build.sh`',
    );
  }
  return native as unknown as DistributedBinding;
}

/** A pending collective. `wait` blocks (up to the timeout); `waitAsync` keeps the event loop free. */
export class Work {
  constructor(
    private readonly d: DistributedBinding,
    readonly handle: WorkHandle,
  ) {}
  wait(timeoutMs?: number): void {
    this.d.workWait(this.handle, timeoutMs);
  }
  waitAsync(timeoutMs?: number): Promise<void> {
    return this.d.workWaitAsync(this.handle, timeoutMs);
  }
  get isCompleted(): boolean {
    return this.d.workIsCompleted(this.handle);
  }
}

function checkInt(name: string, v: number, lo: number, hi = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`process group: ${name} must be an integer in [${lo}, ${hi}], got ${v}`);
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

export class ProcessGroup {
  readonly rank: number;
  readonly worldSize: number;
  readonly timeoutMs: number;
  #handle: GroupHandle | null;

  private constructor(
    private readonly d: DistributedBinding,
    handle: GroupHandle,
    o: Required<Pick<ProcessGroupOptions, 'rank' | 'worldSize' | 'timeoutMs'>>,
  ) {
    this.#handle = handle;
    this.rank = o.rank;
    this.worldSize = o.worldSize;
    this.timeoutMs = o.timeoutMs;
  }

  /** Joins the group; resolves once every rank has joined (or rejects after the timeout). */
  static async init(o: ProcessGroupOptions): Promise<ProcessGroup> {
    const d = distributedBinding();
    checkInt('worldSize', o.worldSize, 1);
    checkInt('rank', o.rank, 0, o.worldSize - 1);
    checkInt('port', o.port, 1, 65535);
    const timeoutMs = o.timeoutMs ?? 60_000;
    checkInt('timeoutMs', timeoutMs, 1);
    const heartbeatMs = o.heartbeatMs ?? Math.min(1000, Math.max(50, Math.floor(timeoutMs / 10)));
    checkInt('heartbeatMs', heartbeatMs, 1);
    if (!o.host) throw new Error('process group: host (MASTER_ADDR) is empty');
    const handle = await d.distInit({
      host: o.host,
      port: o.port,
      rank: o.rank,
      worldSize: o.worldSize,
      timeoutMs,
      heartbeatMs,
      // A loopback job binds Gloo to loopback too: this host's name may resolve to an address
      // that is firewalled or absent (containers).
      deviceHost: !o.ifname && LOOPBACK.has(o.host) ? '127.0.0.1' : undefined,
      ifname: o.ifname,
      nccl: o.nccl ?? true,
    });
    return new ProcessGroup(d, handle, { rank: o.rank, worldSize: o.worldSize, timeoutMs });
  }

  get handle(): GroupHandle {
    if (!this.#handle) throw new Error('process group was destroyed');
    return this.#handle;
  }

  /** Collectives launched so far by this rank (the same sequence on every rank). */
  get collectives(): number {
    return this.d.distInfo(this.handle).collectives;
  }
  get usesNccl(): boolean {
    return this.d.distInfo(this.handle).nccl;
  }

  /** In-place all-reduce of a contiguous tensor; 'avg' divides the sum by the world size. */
  allReduce(x: Tensor, op: 'sum' | 'avg' = 'sum'): Work {
    return new Work(this.d, this.d.distAllReduce(this.handle, x.handle, op));
  }

  /** In-place broadcast of a contiguous tensor from `root`. */
  broadcast(x: Tensor, root = 0): Work {
    return new Work(this.d, this.d.distBroadcast(this.handle, x.handle, root));
  }

  barrier(): Work {
    return new Work(this.d, this.d.distBarrier(this.handle));
  }

  /** Releases the group (its threads and connections); it cannot be used afterwards. */
  destroy(): void {
    if (this.#handle) this.d.distDestroy(this.#handle);
    this.#handle = null;
  }
}
