// Data-parallel training with PyTorch DDP's semantics over a c10d process group:
//  - every rank starts from rank 0's weights and buffers (one broadcast at construction);
//  - each distinct parameter's gradient is averaged once per step: `model.parameters()` lists a
//    shared kernel once, so its gradient (the sum over every layer that uses it) is reduced once;
//  - gradients travel in flat buckets whose all-reduce starts from an autograd hook as soon as
//    the bucket is complete, overlapping with the rest of the backward pass (native/distributed.cc);
//  - BatchNorm normalises with each process's own batch statistics (DDP's default); with
//    `broadcastBuffers` (DDP's default too) rank 0's running statistics are copied to every rank
//    before each forward, so all ranks evaluate with the same model.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import type { BucketerHandle, DistributedBinding } from '../tensor/native.js';
import { distributedBinding, type ProcessGroup } from './process-group.js';

export interface DataParallelOptions {
  /** Bucket size cap in MB (DDP's default is 25; smaller buckets start communicating earlier). */
  bucketCapMB?: number;
  /** Copy rank 0's buffers (BatchNorm running statistics) to every rank before each forward. Default true. */
  broadcastBuffers?: boolean;
}

export interface StepCommStats {
  /** Time spent waiting for gradient all-reduces after backward (what overlap did not hide). */
  waitMs: number;
  /** Time spent broadcasting buffers before the forward pass. */
  bufferMs: number;
  /** Buckets whose all-reduce started while backward was still running. */
  launchedEarly: number;
  buckets: number;
}

/** The distinct trainable parameters of a model, in registration order (a shared kernel once). */
export function distinctTrainable(model: Module): Tensor[] {
  return model.parameters().filter((p) => p.requiresGrad);
}

/** Broadcasts tensors from `root` in place, flattened per dtype into one collective each. */
export function broadcastTensors(group: ProcessGroup, tensors: Tensor[], root = 0): void {
  const byDtype = new Map<string, Tensor[]>();
  for (const x of tensors) {
    const key = `${x.dtype}@${x.device}`;
    byDtype.set(key, [...(byDtype.get(key) ?? []), x]);
  }
  for (const list of byDtype.values()) {
    t.tidy(() =>
      t.noGrad(() => {
        const flat = t.cat(list.map((x) => x.reshape([-1])));
        group.broadcast(flat, root).wait();
        let offset = 0;
        for (const x of list) {
          t.copy_(x, t.slice(flat, 0, offset, offset + x.size).view(x.shape));
          offset += x.size;
        }
      }),
    );
  }
}

export class DataParallel {
  readonly params: Tensor[];
  readonly bucketBytes: number[];
  /** Bytes all-reduced per step (the gradients of the distinct trainable parameters). */
  readonly bytesPerStep: number;
  readonly broadcastBuffers: boolean;
  readonly #d: DistributedBinding;
  #bucketer: BucketerHandle | null;
  #bufferMs = 0;

  constructor(
    readonly group: ProcessGroup,
    readonly model: Module,
    o: DataParallelOptions = {},
  ) {
    this.#d = distributedBinding();
    const capMB = o.bucketCapMB ?? 25;
    if (!(capMB > 0) || !Number.isFinite(capMB)) throw new RangeError(`DataParallel: bucketCapMB must be a positive number, got ${capMB}`);
    this.broadcastBuffers = o.broadcastBuffers ?? true;
    this.params = distinctTrainable(model);
    const buffers = model.buffers();
    // Gloo aborts the process on collectives of mismatched sizes, so the model and the bucket
    // layout are compared with rank 0's first (as DDP verifies parameter shapes).
    const bucketCap = Math.round(capMB * 1024 * 1024);
    const layout = (sizes: number[]) => [sizes.length, ...[0, 1].map((k) => sizes.reduce((a, n, i) => a + n * (k ? i + 1 : 1), 0))];
    const mine = [...layout(this.params.map((p) => p.size)), ...layout(buffers.map((b) => b.size)), bucketCap];
    const theirs = t.tidy(() => {
      const x = t.tensor(Float64Array.from(mine));
      group.broadcast(x, 0).wait();
      return x.toArray();
    });
    if (theirs.some((v, i) => v !== mine[i])) {
      const what = theirs.slice(0, 6).some((v, i) => v !== mine[i])
        ? 'its model (parameter or buffer shapes)'
        : `its bucket size (${bucketCap} bytes vs rank 0's ${theirs[6]})`;
      throw new Error(`DataParallel: rank ${group.rank} differs from rank 0 in ${what}; every rank must build the same model with the same options`);
    }
    // Same starting point everywhere, as DDP's constructor does.
    broadcastTensors(group, [...this.params, ...buffers]);
    this.#bucketer = this.#d.bucketerNew(
      group.handle,
      this.params.map((p) => p.handle),
      bucketCap,
    );
    const info = this.#d.bucketerInfo(this.#bucketer);
    this.bucketBytes = info.bucketBytes;
    this.bytesPerStep = info.bytes;
  }

  get #handle(): BucketerHandle {
    if (!this.#bucketer) throw new Error('DataParallel was disposed');
    return this.#bucketer;
  }

  /** Before the forward pass: rank 0's buffers everywhere (when broadcastBuffers). */
  beforeForward(): void {
    if (!this.broadcastBuffers || this.group.worldSize === 1) return;
    const buffers = this.model.buffers();
    if (!buffers.length) return;
    const t0 = performance.now();
    broadcastTensors(this.group, buffers);
    this.#bufferMs = performance.now() - t0;
  }

  /** Before backward: its gradients feed the buckets. */
  beforeBackward(): void {
    this.#d.bucketerPrepare(this.#handle);
  }

  /** After backward: every parameter's .grad is the average over ranks. */
  afterBackward(): StepCommStats {
    const r = this.#d.bucketerFinish(this.#handle, this.group.timeoutMs);
    const bufferMs = this.#bufferMs;
    this.#bufferMs = 0;
    return { waitMs: r.waitMs, bufferMs, launchedEarly: r.launchedEarly, buckets: r.buckets };
  }

  /** loss.backward() with the gradients averaged over ranks. */
  backward(loss: Tensor, grad?: Tensor): StepCommStats {
    this.beforeBackward();
    loss.backward(grad);
    return this.afterBackward();
  }

  dispose(): void {
    if (this.#bucketer) this.#d.bucketerDestroy(this.#bucketer);
    this.#bucketer = null;
  }
}

/** Sums numbers over ranks (float64): losses, correct counts, images seen. */
export function allReduceNumbers(group: ProcessGroup, values: number[]): number[] {
  if (group.worldSize === 1) return values.slice();
  return t.tidy(() => {
    const x = t.tensor(Float64Array.from(values), [values.length]);
    group.allReduce(x, 'sum').wait();
    return x.toArray();
  });
}
