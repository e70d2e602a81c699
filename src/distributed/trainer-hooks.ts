// Data-parallel training through the trainer's hooks (src/train/trainer.ts): the same loop, with
//  - each epoch's order split across ranks: global step s takes order[s*B*W, (s+1)*B*W), rank r
//    its block s*W + r, so W ranks with batch B see exactly what one process with batch B*W sees;
//  - gradients averaged over ranks after backward (DataParallel: buckets, overlapped);
//  - rank 0's buffers copied to every rank after each step (DDP's broadcast_buffers);
//  - a stop (Ctrl-C) agreed by all ranks at the same step, so rank 0's checkpoint is the state of all;
//  - only rank 0 writing the run folder.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import type { TrainHooks } from '../train/trainer.js';
import { writeJsonAtomic } from '../train/run-log.js';
import { DataParallel, broadcastTensors, allReduceNumbers, type DataParallelOptions } from './data-parallel.js';
import type { ProcessGroup } from './process-group.js';

export const DISTRIBUTED_FILE = 'distributed.json';

export interface DistributedRunInfo {
  worldSize: number;
  /** The recipe's batch size: per process. */
  batchPerProcess: number;
  globalBatch: number;
}

/** Rank 0's record of how the run is split; --resume must use the same world size. */
export function checkResumeWorldSize(outDir: string, worldSize: number): void {
  const file = path.join(outDir, DISTRIBUTED_FILE);
  const was = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as DistributedRunInfo).worldSize : 1;
  if (was !== worldSize) {
    throw new Error(
      `--resume: ${outDir} was trained by ${was} process${was === 1 ? '' : 'es'}, this run has ${worldSize}; ` +
        `resume with the same number (${was === 1 ? 'without --nproc / WORLD_SIZE' : `--nproc ${was}, or WORLD_SIZE=${was}`}): the data split, the global batch and the learning-rate schedule depend on it`,
    );
  }
}

export function writeRunInfo(outDir: string, info: DistributedRunInfo): void {
  writeJsonAtomic(path.join(outDir, DISTRIBUTED_FILE), info);
}

/** Rank 0's value for every rank (e.g. a random seed drawn by rank 0). */
export function agreeOnNumber(group: ProcessGroup, value: number): number {
  return allReduceNumbers(group, [group.rank === 0 ? value : 0])[0]!;
}

export interface CommTotals {
  steps: number;
  /** Waiting for gradient all-reduces after backward, buffer broadcasts, the stop flag. */
  commMs: number;
  bytesPerStep: number;
  buckets: number;
}

export class DataParallelTraining {
  readonly stop: AbortSignal;
  readonly totals: CommTotals = { steps: 0, commMs: 0, bytesPerStep: 0, buckets: 0 };
  /** Called once, after the first step's gradients are averaged. */
  onFirstStep: (() => void) | null = null;
  #dp: DataParallel | null = null;
  #model: Module | null = null;
  #stop = new AbortController();
  #stopRequested = false;

  constructor(
    readonly group: ProcessGroup,
    readonly batchSize: number,
    private readonly opts: DataParallelOptions = {},
  ) {
    this.stop = this.#stop.signal;
  }

  /** Asks every rank to stop after the current step (the stop takes effect where all agree). */
  requestStop(): void {
    this.#stopRequested = true;
  }

  /** Wraps the trainer's model factory: every rank starts from rank 0's weights and buffers. */
  wrapBuildModel(build: () => Module): () => Module {
    return () => {
      const m = build();
      broadcastTensors(this.group, [...m.parameters(), ...m.buffers()]);
      this.#model = m;
      return m;
    };
  }

  get hooks(): TrainHooks {
    const W = this.group.worldSize,
      r = this.group.rank,
      B = this.batchSize;
    return {
      writes: r === 0,
      shard: {
        size: (count) => Math.floor(count / (B * W)) * B,
        select: (order: Tensor) => {
          const steps = Math.floor(order.dim(0) / (B * W));
          return t.select(t.slice(order, 0, 0, steps * B * W).reshape([steps, W, B]), 1, r).reshape([-1]);
        },
      },
      afterBackward: () => this.#afterBackward(),
    };
  }

  #afterBackward(): void {
    const start = performance.now();
    let dp = this.#dp;
    if (!dp) {
      // Built at the first step, when the trainer has moved the model to its device; this
      // step's gradients are then bucketed after backward, later steps' during it.
      if (!this.#model) throw new Error('DataParallelTraining: the model was not built through wrapBuildModel');
      dp = this.#dp = new DataParallel(this.group, this.#model, { ...this.opts, broadcastBuffers: false });
      this.totals.bytesPerStep = dp.bytesPerStep;
      this.totals.buckets = dp.bucketBytes.length;
      dp.beforeBackward();
    }
    dp.afterBackward();
    if (this.totals.steps === 0) this.onFirstStep?.();
    if (this.opts.broadcastBuffers ?? true) {
      const buffers = this.#model!.buffers();
      if (buffers.length) broadcastTensors(this.group, buffers);
    }
    const [stops] = allReduceNumbers(this.group, [this.#stopRequested ? 1 : 0]);
    if (stops! > 0) this.#stop.abort();
    dp.beforeBackward();
    this.totals.steps++;
    this.totals.commMs += performance.now() - start;
  }

  dispose(): void {
    this.#dp?.dispose();
    this.#dp = null;
  }
}
