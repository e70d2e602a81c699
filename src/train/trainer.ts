// The training loop: seeded data order and augmentation on the training device, the recipe's
// optimiser and schedule, evaluation and a checkpoint after every epoch, exact resume (also
// from the middle of an epoch, after Ctrl-C), and a stop with a clear message on a NaN/inf loss.
import { mkdirSync, existsSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import path from 'node:path';
import * as t from '../tensor/index.js';
import type { Tensor, Device } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import type { ImageDataset } from '../data/types.js';
import { toDevice, balancedSubset, epochOrder, batchCount, takeBatch } from '../data/tensors.js';
import { GradScaler, scaledStep } from './optim/index.js';
import { TrainAugment } from './augment/pipeline.js';
import { learningRate } from './schedule.js';
import { buildOptimizer } from './build-optimizer.js';
import { evaluate } from './evaluate.js';
import { saveCheckpoint, readCheckpoint, restoreModel, restoreOptimizer, type EpochRecord, type CheckpointMeta, type LoadedCheckpoint } from './checkpoint.js';
import { EpochProgress, appendLog, rewriteLog, writeJsonAtomic, formatDuration, CHECKPOINT_FILE, SUMMARY_FILE } from './run-log.js';
import type { Recipe } from './recipe.js';
import { acquireRunLock } from './run-lock.js';

export class NonFiniteLossError extends Error {}

/**
 * Seams for code that extends the loop without forking it (data-parallel training, run
 * monitors). Every hook is optional; without hooks a run is one process writing its folder.
 */
export interface TrainHooks {
  /** After backward, before gradient clipping and the optimiser step (e.g. all-reduce the gradients). */
  afterBackward?: (params: Tensor[], step: { epoch: number; step: number; globalStep: number }) => void;
  /** Whether this process writes the run folder (checkpoint, logs, summary); other data-parallel ranks say false. */
  writes?: boolean;
  /** This process's share of each epoch's sample order (data-parallel sharding). */
  shard?: {
    /** How many samples a share of `count` holds (the same every epoch). */
    size(count: number): number;
    /** This process's share of an epoch's order (a new tensor of `size(order.dim(0))` indices). */
    select(order: Tensor): Tensor;
  };
}

export interface TrainOptions {
  recipe: Recipe;
  /** Builds the model with fresh weights; called right after seeding the global generator. */
  buildModel: () => Module;
  modelName: string;
  /** The registry config of the model, stored so `eval` can rebuild it. */
  modelConfig?: unknown;
  train: ImageDataset;
  test: ImageDataset;
  /** How the data was named on the command line (cifar10, a folder...), stored for `eval`. */
  datasetSpec?: string;
  outDir: string;
  device?: Device;
  /** channels_last speeds up depthwise convolutions on CPU (ConvMixer); numerics are the same up to rounding. */
  channelsLast?: boolean;
  /** A checkpoint to continue from (exactly where it stopped). */
  resume?: string | null;
  /** Draw a progress bar (only meaningful on a terminal). */
  progress?: boolean;
  /** Receives one human-readable line per event (default: console.log). */
  log?: (line: string) => void;
  /** Stop (with a checkpoint, as always) after this many epochs of this process; resume continues. */
  stopAfterEpochs?: number;
  /** When aborted, the run checkpoints after the current step and returns (Ctrl-C). */
  stop?: AbortSignal;
  /** Called after every optimisation step (tests, monitoring). */
  onStep?: (s: { epoch: number; step: number; globalStep: number; loss: number }) => void;
  hooks?: TrainHooks;
}

export interface ParameterCounts {
  /** Distinct trainable scalars (a shared kernel once). */
  trainable: number;
  /** Trainable scalars if every layer had its own copy (each alias name counted). */
  unshared: number;
}

export function countParameters(model: Module): ParameterCounts {
  const params = new Set(model.parameters().filter((p) => p.requiresGrad));
  let trainable = 0;
  for (const p of params) trainable += p.size;
  let unshared = 0;
  for (const [, v] of model.stateDict()) if (params.has(v)) unshared += v.size;
  return { trainable, unshared };
}

export interface TrainSummary {
  /** completed: all epochs; stopped: --stop-after-epochs reached; interrupted: Ctrl-C (mid-epoch checkpoint); running: written between epochs. */
  status: 'completed' | 'stopped' | 'interrupted' | 'running';
  model: string;
  dataset: string;
  recipe: string;
  seed: number;
  device: string;
  epochs: number;
  epochsDone: number;
  bestAcc: number;
  finalAcc: number;
  trainableParams: number;
  unsharedParams: number;
  trainImages: number;
  testImages: number;
  /** Wall time of this process's part of the run (training and evaluation). */
  seconds: number;
  /** Mean training throughput over the epochs run by this process. */
  imgPerSec: number;
  checkpoint: string;
  history: EpochRecord[];
}

const yieldToEvents = () => new Promise<void>((r) => setImmediate(r));

/** Runs (or continues) a training run; resolves with its summary, also written to <out>/summary.json. */
export async function train(o: TrainOptions): Promise<TrainSummary> {
  const log = o.log ?? ((l: string) => console.log(l));
  const device = o.device ?? 'cpu';
  const cuda = device.startsWith('cuda');
  if (cuda && !t.cudaAvailable()) throw new Error(`device '${device}' requested but this libtorch build has no CUDA device (kshare selfcheck --device cuda tells more)`);
  const recipe = o.recipe;
  const writes = o.hooks?.writes ?? true;
  if (writes) mkdirSync(o.outDir, { recursive: true });
  const ckptFile = path.join(o.outDir, CHECKPOINT_FILE);
  // Only the writing process holds the run folder's lock (data-parallel: rank 0).
  const lock = writes ? acquireRunLock(o.outDir) : null;
  for (const note of lock?.notes ?? []) log(`note: ${note}`);

  let ck: LoadedCheckpoint | null = null;
  const owned: { dispose(): void }[] = [];
  try {
    if (!o.resume && existsSync(ckptFile)) {
      throw new Error(`${o.outDir} already holds a run (${CHECKPOINT_FILE}): continue it with --resume, or choose another --out`);
    }
    if (recipe.augment.mean.length !== o.train.channels) {
      throw new Error(`recipe '${recipe.name}' normalises ${recipe.augment.mean.length} channels but ${o.train.name} images have ${o.train.channels}; set augment.mean and augment.std (e.g. --set augment.mean=[0.5] --set augment.std=[0.25])`);
    }
    if (o.resume) {
      ck = readCheckpoint(o.resume);
      if (ck.meta.modelName !== o.modelName) throw new Error(`${o.resume} was trained as model '${ck.meta.modelName}', not '${o.modelName}'`);
      if (ck.meta.dataset !== o.train.name) throw new Error(`${o.resume} was trained on ${ck.meta.dataset}, not ${o.train.name}`);
    }
    const seed = ck ? ck.meta.seed : recipe.seed ?? randomInt(0, 2 ** 31);
    t.manualSeed(seed);
    const model = o.buildModel();
    owned.push(model);
    const trainSet = toDevice(recipe.trainPerClass ? balancedSubset(o.train, recipe.trainPerClass) : o.train, device);
    owned.push(trainSet);
    const testSet = toDevice(recipe.testPerClass ? balancedSubset(o.test, recipe.testPerClass) : o.test, device);
    owned.push(testSet);
    if (testSet.classes.length !== trainSet.classes.length) throw new Error(`train and test sets have ${trainSet.classes.length} and ${testSet.classes.length} classes`);
    const classes = trainSet.classes.length;
    const samplesPerEpoch = o.hooks?.shard ? o.hooks.shard.size(trainSet.count) : trainSet.count;
    const itersPerEpoch = batchCount(samplesPerEpoch, recipe.batchSize, true);
    if (itersPerEpoch < 1) throw new Error(`the training set (${trainSet.count} images) is smaller than one batch of ${recipe.batchSize}`);

    const memoryFormat = o.channelsLast ? 'channels_last' as const : 'contiguous' as const;
    model.to({ device, memoryFormat });
    model.train();
    const counts = countParameters(model);
    const optimizer = buildOptimizer(model, recipe.optimizer);
    owned.push(optimizer);
    const params = optimizer.groups.flatMap((g) => g.params);
    const amp = recipe.amp && cuda;
    const scaler = new GradScaler({ enabled: amp });
    owned.push(scaler);
    const shuffle = new t.Generator(seed);
    const augParams = new t.Generator(seed + 1);
    const noise = new t.Generator(seed + 2, device);
    const augment = new TrainAugment(recipe.augment, classes, augParams, noise);

    let epoch = 0, stepInEpoch = 0, globalStep = 0, bestAcc = 0;
    let history: EpochRecord[] = [];
    let partial: CheckpointMeta['partial'] = null;
    if (ck) {
      restoreModel(model, ck);
      restoreOptimizer(optimizer, ck);
      if (ck.meta.scaler && amp) scaler.loadStateDict(ck.meta.scaler, device);
      t.setRngState({ cpu: ck.rng.globalCpu, cuda: ck.rng.globalCuda });
      shuffle.setState(ck.rng.shuffle);
      augParams.setState(ck.rng.params);
      try {
        noise.setState(ck.rng.noise);
      } catch {
        log(`note: ${o.resume} was written on another device type; erasing noise restarts from the seed (the rest resumes exactly)`);
      }
      ({ epoch, stepInEpoch, globalStep, bestAcc, history, partial } = ck.meta);
      if (ck.meta.itersPerEpoch !== itersPerEpoch) throw new Error(`${o.resume}: it ran ${ck.meta.itersPerEpoch} steps per epoch, this run would run ${itersPerEpoch} (batch size or data changed)`);
      ck.dispose();
      ck = null;
      if (writes) rewriteLog(o.outDir, history);
      log(`resuming ${o.modelName} from ${o.resume}: epoch ${epoch + 1}/${recipe.epochs}${stepInEpoch ? `, step ${stepInEpoch}/${itersPerEpoch}` : ''}, best ${pct(bestAcc)}`);
    } else if (writes) {
      rewriteLog(o.outDir, []);
    }

    log(`training ${o.modelName} on ${trainSet.name} (${trainSet.count} train / ${testSet.count} test images, ${classes} classes) on ${device}: ` +
      `${counts.trainable.toLocaleString('en-US')} trainable parameters (${counts.unshared.toLocaleString('en-US')} unshared), recipe ${recipe.name}, seed ${seed}, ${itersPerEpoch} steps/epoch${recipe.amp && !cuda ? ' (mixed precision is CUDA-only: float32 on CPU)' : ''}`);

    const ctx = { baseLr: recipe.optimizer.lr, epochs: recipe.epochs, itersPerEpoch };
    const progress = new EpochProgress(!!o.progress);
    const runStart = performance.now();
    let trainedImages = 0, trainSeconds = 0;
    let status: TrainSummary['status'] = 'completed';
    const lastEpoch = o.stopAfterEpochs ? Math.min(recipe.epochs, epoch + o.stopAfterEpochs) : recipe.epochs;

    const summarize = (st: TrainSummary['status']): TrainSummary => ({
      status: st, model: o.modelName, dataset: trainSet.name, recipe: recipe.name, seed, device,
      epochs: recipe.epochs, epochsDone: history.length, bestAcc, finalAcc: history[history.length - 1]?.testAcc ?? 0,
      trainableParams: counts.trainable, unsharedParams: counts.unshared,
      trainImages: trainSet.count, testImages: testSet.count,
      seconds: (performance.now() - runStart) / 1000, imgPerSec: trainedImages / Math.max(trainSeconds, 1e-9),
      checkpoint: ckptFile, history,
    });

    /** Writes <out>/checkpoint.safetensors; `done` epochs completed, `step` batches into the next. */
    const checkpoint = (reason: 'epoch' | 'interrupt', shuffleState: Tensor, done: number, step: number) => {
      if (!writes) return;
      const rngGlobal = t.getRngState();
      const params = augParams.getState();
      const noiseState = noise.getState();
      try {
        saveCheckpoint(ckptFile, {
          model, optimizer, scalerState: amp ? scaler.stateDict() : null,
          rng: { globalCpu: rngGlobal.cpu, globalCuda: rngGlobal.cuda, shuffle: shuffleState, params, noise: noiseState },
          meta: {
            modelName: o.modelName, modelConfig: o.modelConfig ?? null, classes: trainSet.classes, dataset: trainSet.name, datasetSpec: o.datasetSpec ?? null,
            recipe, seed, epoch: done, stepInEpoch: step, globalStep, itersPerEpoch, partial, bestAcc, history, reason,
          },
        });
      } finally {
        t.dispose([rngGlobal.cpu, rngGlobal.cuda, params, noiseState]);
      }
    };

    for (; epoch < lastEpoch && status === 'completed'; epoch++) {
      const epochStart = performance.now();
      const shuffleAtStart = t.keep(shuffle.getState());
      const order = t.keep(t.tidy(() => {
        const full = epochOrder(trainSet.count, shuffle, device);
        return o.hooks?.shard ? o.hooks.shard.select(full) : full;
      }));
      let { lossSum, correct, seen, seconds: carried } = partial ?? { lossSum: 0, correct: 0, seen: 0, seconds: 0 };
      let lr = learningRate(recipe.schedule, ctx, globalStep);
      progress.start(epoch + 1, recipe.epochs, itersPerEpoch, stepInEpoch);
      const trainStart = performance.now();
      const imagesBefore = seen;
      try {
        for (; stepInEpoch < itersPerEpoch; stepInEpoch++) {
          lr = learningRate(recipe.schedule, ctx, globalStep);
          optimizer.setLr(lr);
          const [loss, hits, n] = t.tidy(() => {
            const { images, labels } = takeBatch(trainSet, order, stepInEpoch, recipe.batchSize);
            const { x, target } = augment.apply(images, labels);
            const input = o.channelsLast ? x.contiguous('channels_last') : x;
            const logits = t.autocast({ device: 'cuda', dtype: 'float16', enabled: amp }, () => model.forward(input)).to('float32');
            const lossT = t.crossEntropy(logits, target);
            const value = lossT.item();
            if (!Number.isFinite(value)) {
              throw new NonFiniteLossError(`training stopped: the loss is ${value} at epoch ${epoch + 1}, step ${stepInEpoch + 1}/${itersPerEpoch} (global step ${globalStep + 1}, lr ${lr.toPrecision(3)}). ` +
                (history.length ? `The last good checkpoint (end of epoch ${history.length}, best test accuracy ${pct(bestAcc)}) is intact at ${ckptFile}` : `No epoch had completed, so no checkpoint was written`) +
                '; a lower learning rate or gradient clipping may help.');
            }
            const scaled = scaler.scale(lossT);
            scaled.backward();
            o.hooks?.afterBackward?.(params, { epoch, step: stepInEpoch, globalStep });
            scaledStep(scaler, optimizer, params, recipe.clipGradNorm);
            optimizer.zeroGrad();
            const h = t.noGrad(() => {
              const truth = target.rank === 2 ? t.argmax(target, 1) : target;
              return t.sum(t.eq(t.argmax(logits, 1), truth)).item();
            });
            return [value, h, labels.dim(0)];
          });
          globalStep++;
          lossSum += loss * n;
          correct += hits;
          seen += n;
          const elapsed = (performance.now() - trainStart) / 1000;
          progress.update(stepInEpoch + 1, lossSum / seen, (seen - imagesBefore) / Math.max(elapsed, 1e-9));
          o.onStep?.({ epoch, step: stepInEpoch, globalStep, loss });
          await yieldToEvents();
          if (o.stop?.aborted) {
            stepInEpoch++;
            const secs = carried + (performance.now() - epochStart) / 1000;
            partial = { lossSum, correct, seen, seconds: secs };
            checkpoint('interrupt', shuffleAtStart, epoch, stepInEpoch);
            status = 'interrupted';
            trainedImages += seen - imagesBefore;
            trainSeconds += (performance.now() - trainStart) / 1000;
            break;
          }
        }
        progress.stop();
        if (status === 'interrupted') {
          log(`interrupted at epoch ${epoch + 1}, step ${stepInEpoch}/${itersPerEpoch}: checkpoint written to ${ckptFile} (continue with --resume ${ckptFile})`);
          break;
        }
        const trainTime = (performance.now() - trainStart) / 1000;
        trainedImages += seen - imagesBefore;
        trainSeconds += trainTime;
        const ev = evaluate(model, testSet, { batchSize: recipe.evalBatchSize, mean: recipe.augment.mean, std: recipe.augment.std, amp, channelsLast: o.channelsLast });
        bestAcc = Math.max(bestAcc, ev.accuracy);
        const rec: EpochRecord = {
          epoch: epoch + 1, lr, trainLoss: lossSum / seen, trainAcc: correct / seen, testLoss: ev.loss, testAcc: ev.accuracy, bestAcc,
          seconds: carried + (performance.now() - epochStart) / 1000, imgPerSec: (seen - imagesBefore) / Math.max(trainTime, 1e-9), dataset: trainSet.name,
        };
        history.push(rec);
        stepInEpoch = 0;
        partial = null;
        const finished = epoch + 1;
        const shuffleNow = shuffle.getState();
        try {
          checkpoint('epoch', shuffleNow, finished, 0);
        } finally {
          shuffleNow.dispose();
        }
        if (writes) {
          appendLog(o.outDir, rec);
          // Kept current every epoch so `kshare report` also reads unfinished runs.
          writeJsonAtomic(path.join(o.outDir, SUMMARY_FILE), summarize(finished < recipe.epochs ? 'running' : 'completed'));
        }
        const left = (recipe.epochs - finished) * rec.seconds;
        log(`epoch ${finished}/${recipe.epochs}: train loss ${rec.trainLoss.toFixed(4)}, train acc ${pct(rec.trainAcc)}, test acc ${pct(rec.testAcc)} (best ${pct(bestAcc)}), ` +
          `lr ${lr.toPrecision(3)}, ${rec.imgPerSec.toFixed(0)} img/s, ${formatDuration(rec.seconds)}${left > 0 ? `, about ${formatDuration(left)} left` : ''}`);
      } finally {
        progress.stop();
        order.dispose();
        shuffleAtStart.dispose();
      }
    }

    if (status === 'completed' && history.length < recipe.epochs) {
      status = 'stopped';
      log(`stopped after epoch ${history.length}/${recipe.epochs} as asked; continue with --resume ${ckptFile}`);
    }
    const summary = summarize(status);
    if (writes) writeJsonAtomic(path.join(o.outDir, SUMMARY_FILE), summary);
    return summary;
  } finally {
    ck?.dispose();
    for (const x of owned.reverse()) x.dispose();
    lock?.release();
  }
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}
