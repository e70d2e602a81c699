// The training loop: seeded data order and augmentation on the training device, the recipe's
// optimiser and schedule, evaluation and a checkpoint after every epoch, exact resume (also
// from the middle of an epoch, after Ctrl-C), and a stop with a clear message on a NaN/inf loss.
//
// Read top to bottom: `setUp` builds everything a run needs (a Session), `restore` turns a
// checkpoint into a RunState (where the run stands; the checkpoint serialises exactly that),
// `trainEpoch` runs the steps of one epoch and `trainStep` one step. Per-step loss and hit
// counts stay on the device (an EpochMeter) and are read once per logging interval, so a step
// never waits for the device.
import { mkdirSync, existsSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import path from 'node:path';
import * as t from '../tensor/index.js';
import type { Tensor, Device, Generator } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import type { ImageDataset } from '../data/types.js';
import { toDevice, balancedSubset, epochOrder, batchCount, takeBatch, type DeviceDataset } from '../data/tensors.js';
import { GradScaler, scaledStep } from './optim/index.js';
import { TrainAugment } from './augment/pipeline.js';
import { learningRate, type ScheduleContext } from './schedule.js';
import { buildOptimizer, type AnyOptimizer } from './build-optimizer.js';
import { evaluate } from './evaluate.js';
import { saveCheckpoint, readCheckpoint, readCheckpointMeta, restoreModel, restoreOptimizer, type EpochRecord, type CheckpointMeta } from './checkpoint.js';
import { EpochProgress, appendLog, rewriteLog, appendSteps, truncateSteps, writeJsonAtomic, formatDuration, CHECKPOINT_FILE, SUMMARY_FILE } from './run-log.js';
import type { Recipe } from './recipe.js';
import type { StepRecord } from './report.js';
import { acquireRunLock } from './run-lock.js';

export class NonFiniteLossError extends Error {}

/** What one optimisation step reports to `onStep` (reading `loss` waits for the device). */
export interface StepInfo {
  /** 0-based epoch and step within it. */
  epoch: number;
  step: number;
  globalStep: number;
  readonly loss: number;
}

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
  /** Print a plain progress line every logging interval (for logs without a terminal). */
  progressLines?: boolean;
  /** When steps.jsonl gets a line: every `steps` steps (default: a tenth of an epoch) and at least every `seconds` (default 30). */
  logEvery?: { steps?: number; seconds?: number };
  /** Receives one human-readable line per event (default: console.log). */
  log?: (line: string) => void;
  /** Stop (with a checkpoint, as always) after this many epochs of this process; resume continues. */
  stopAfterEpochs?: number;
  /** When aborted, the run checkpoints after the current step and returns (Ctrl-C). */
  stop?: AbortSignal;
  /** Called after every optimisation step (tests, monitoring). */
  onStep?: (s: StepInfo) => void;
  /** Called with every line written to steps.jsonl. */
  onInterval?: (r: StepRecord) => void;
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
  /** Where an interrupted run stopped: 1-based epoch, steps done in it, steps per epoch. */
  interruptedAt?: { epoch: number; step: number; steps: number };
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

/** Where a run stands. The checkpoint's metadata is this plus the run's fixed facts. */
export interface RunState {
  /** Epochs completed. */
  epoch: number;
  /** Steps of epoch `epoch` done (non-zero only mid-epoch). */
  stepInEpoch: number;
  globalStep: number;
  bestAcc: number;
  history: EpochRecord[];
  /** Running sums of the unfinished epoch, so its log line comes out as without an interruption. */
  partial: NonNullable<CheckpointMeta['partial']> | null;
  /** Seconds of training and evaluation before this process (steps.jsonl's clock). */
  elapsedS: number;
}

/** Everything a run needs besides its state: built once by `setUp`, released by `dispose`. */
interface Session {
  o: TrainOptions;
  recipe: Recipe;
  log: (line: string) => void;
  device: Device;
  amp: boolean;
  writes: boolean;
  seed: number;
  model: Module;
  optimizer: AnyOptimizer;
  params: Tensor[];
  scaler: GradScaler;
  trainSet: DeviceDataset;
  testSet: DeviceDataset;
  classes: number;
  /** Samples this process trains on per epoch (its shard). */
  samplesPerEpoch: number;
  itersPerEpoch: number;
  counts: ParameterCounts;
  schedule: ScheduleContext;
  shuffle: Generator;
  augParams: Generator;
  noise: Generator;
  augment: TrainAugment;
  ckptFile: string;
  progress: EpochProgress;
  /** When this process started training (performance.now()). */
  started: number;
  /** Images and seconds of training (not evaluation) in this process, for the summary. */
  trainedImages: number;
  trainSeconds: number;
  owned: { dispose(): void }[];
}

const yieldToEvents = () => new Promise<void>((r) => setImmediate(r));

/** Runs (or continues) a training run; resolves with its summary, also written to <out>/summary.json. */
export async function train(o: TrainOptions): Promise<TrainSummary> {
  const owned: { dispose(): void }[] = [];
  try {
    const s = setUp(o, owned);
    const state = s.o.resume ? restore(s, s.o.resume) : fresh(s);
    s.log(
      `training ${o.modelName} on ${s.trainSet.name} (${s.trainSet.count} train / ${s.testSet.count} test images, ${s.classes} classes) on ${s.device}${o.channelsLast ? ' (channels_last)' : ''}: ` +
        `${s.counts.trainable.toLocaleString('en-US')} trainable parameters (${s.counts.unshared.toLocaleString('en-US')} unshared), recipe ${s.recipe.name}, seed ${s.seed}, ${s.itersPerEpoch} steps/epoch` +
        `${s.recipe.amp && !s.amp ? ' (mixed precision is CUDA-only: float32 on CPU)' : ''}`,
    );
    const lastEpoch = o.stopAfterEpochs ? Math.min(s.recipe.epochs, state.epoch + o.stopAfterEpochs) : s.recipe.epochs;
    while (state.epoch < lastEpoch) {
      if (o.stop?.aborted) {
        s.log(`interrupted before epoch ${state.epoch + 1}: the checkpoint of epoch ${state.epoch} is in ${s.ckptFile}`);
        return finish(s, state, 'interrupted');
      }
      const outcome = await trainEpoch(s, state);
      if (outcome === 'interrupted') {
        s.log(`interrupted in epoch ${state.epoch + 1} at step ${state.stepInEpoch}/${s.itersPerEpoch}: checkpoint written to ${s.ckptFile}`);
        return finish(s, state, 'interrupted');
      }
    }
    if (state.history.length < s.recipe.epochs) {
      s.log(`stopped after epoch ${state.history.length}/${s.recipe.epochs} as asked; continue with --resume ${s.ckptFile}`);
      return finish(s, state, 'stopped');
    }
    return finish(s, state, 'completed');
  } finally {
    for (const x of owned.reverse()) x.dispose();
  }
}

/** Checks the options, seeds, and builds the model, data, optimiser and generators. */
function setUp(o: TrainOptions, owned: { dispose(): void }[]): Session {
  const log = o.log ?? ((l: string) => console.log(l));
  const device = o.device ?? 'cpu';
  const cuda = device.startsWith('cuda');
  if (cuda && !t.cudaAvailable())
    throw new Error(`device '${device}' requested but this libtorch build has no CUDA device (kshare selfcheck --device cuda tells more)`);
  const recipe = o.recipe;
  const writes = o.hooks?.writes ?? true;
  const ckptFile = path.join(o.outDir, CHECKPOINT_FILE);
  if (recipe.augment.mean.length !== o.train.channels) {
    throw new Error(
      `recipe '${recipe.name}' normalises ${recipe.augment.mean.length} channels but ${o.train.name} images have ${o.train.channels}; set augment.mean and augment.std (e.g. --set augment.mean=[0.5] --set augment.std=[0.25])`,
    );
  }
  // One run, one folder: the writing process holds the folder's lock from here until `train`
  // returns (released with the rest of `owned`), so the checks below and every write after them
  // see no other run. Non-writing ranks leave the folder alone and take no lock.
  if (writes) {
    mkdirSync(o.outDir, { recursive: true });
    const lock = acquireRunLock(o.outDir);
    owned.push({ dispose: () => lock.release() });
    for (const note of lock.notes) log(`note: ${note}`);
  }
  if (!o.resume && existsSync(ckptFile)) {
    throw new Error(`${o.outDir} already holds a run (${CHECKPOINT_FILE}): continue it with --resume, or choose another --out`);
  }
  // The seed of a resumed run is the checkpoint's: read it before anything random happens.
  let seed = recipe.seed ?? randomInt(0, 2 ** 31);
  if (o.resume) {
    const { meta } = readCheckpointMeta(o.resume);
    if (meta.modelName !== o.modelName) throw new Error(`${o.resume} was trained as model '${meta.modelName}', not '${o.modelName}'`);
    if (meta.dataset !== o.train.name) throw new Error(`${o.resume} was trained on ${meta.dataset}, not ${o.train.name}`);
    seed = meta.seed;
  }
  t.manualSeed(seed);
  const model = o.buildModel();
  owned.push(model);
  const trainSet = toDevice(recipe.trainPerClass ? balancedSubset(o.train, recipe.trainPerClass) : o.train, device);
  owned.push(trainSet);
  const testSet = toDevice(recipe.testPerClass ? balancedSubset(o.test, recipe.testPerClass) : o.test, device);
  owned.push(testSet);
  if (testSet.classes.length !== trainSet.classes.length)
    throw new Error(`train and test sets have ${trainSet.classes.length} and ${testSet.classes.length} classes`);
  const classes = trainSet.classes.length;
  const samplesPerEpoch = o.hooks?.shard ? o.hooks.shard.size(trainSet.count) : trainSet.count;
  const itersPerEpoch = batchCount(samplesPerEpoch, recipe.batchSize, true);
  if (itersPerEpoch < 1) throw new Error(`the training set (${samplesPerEpoch} images) is smaller than one batch of ${recipe.batchSize}`);

  model.to({ device, memoryFormat: o.channelsLast ? 'channels_last' : 'contiguous' });
  model.train();
  const optimizer = buildOptimizer(model, recipe.optimizer);
  owned.push(optimizer);
  const amp = recipe.amp && cuda;
  const scaler = new GradScaler({ enabled: amp });
  owned.push(scaler);
  const shuffle = new t.Generator(seed);
  const augParams = new t.Generator(seed + 1);
  const noise = new t.Generator(seed + 2, device);
  return {
    o,
    recipe,
    log,
    device,
    amp,
    writes,
    seed,
    model,
    optimizer,
    scaler,
    trainSet,
    testSet,
    classes,
    samplesPerEpoch,
    itersPerEpoch,
    params: optimizer.groups.flatMap((g) => g.params),
    counts: countParameters(model),
    schedule: { baseLr: recipe.optimizer.lr, epochs: recipe.epochs, itersPerEpoch },
    shuffle,
    augParams,
    noise,
    augment: new TrainAugment(recipe.augment, classes, augParams, noise),
    ckptFile,
    progress: new EpochProgress(!!o.progress),
    started: performance.now(),
    trainedImages: 0,
    trainSeconds: 0,
    owned,
  };
}

function fresh(s: Session): RunState {
  if (s.writes) {
    rewriteLog(s.o.outDir, []);
    truncateSteps(s.o.outDir, 0);
  }
  return { epoch: 0, stepInEpoch: 0, globalStep: 0, bestAcc: 0, history: [], partial: null, elapsedS: 0 };
}

/** Loads weights, optimiser, scaler and every generator from a checkpoint; returns where the run stands. */
function restore(s: Session, file: string): RunState {
  const ck = readCheckpoint(file);
  try {
    const m = ck.meta;
    if (m.itersPerEpoch !== s.itersPerEpoch)
      throw new Error(`${file}: it ran ${m.itersPerEpoch} steps per epoch, this run would run ${s.itersPerEpoch} (batch size or data changed)`);
    checkExtension(file, m, s.recipe.epochs);
    restoreModel(s.model, ck);
    restoreOptimizer(s.optimizer, ck);
    if (m.scaler && s.amp) s.scaler.loadStateDict(m.scaler, s.device);
    t.setRngState({ cpu: ck.rng.globalCpu, cuda: ck.rng.globalCuda });
    s.shuffle.setState(ck.rng.shuffle);
    s.augParams.setState(ck.rng.params);
    try {
      s.noise.setState(ck.rng.noise);
    } catch {
      s.log(`note: ${file} was written on another device type; erasing noise restarts from the seed (the rest resumes exactly)`);
    }
    if (m.recipe.epochs !== s.recipe.epochs && s.recipe.schedule.type === 'cosine' && m.epoch < m.recipe.epochs) {
      const before = learningRate(m.recipe.schedule, { ...s.schedule, epochs: m.recipe.epochs }, m.globalStep);
      const after = learningRate(s.recipe.schedule, s.schedule, m.globalStep);
      s.log(
        `note: the cosine schedule now spans ${s.recipe.epochs} epochs instead of ${m.recipe.epochs}: the learning rate continues at ${after.toPrecision(3)} (was ${before.toPrecision(3)})`,
      );
    }
    const state: RunState = {
      epoch: m.epoch,
      stepInEpoch: m.stepInEpoch,
      globalStep: m.globalStep,
      bestAcc: m.bestAcc,
      history: m.history,
      partial: m.partial,
      elapsedS: m.elapsedS ?? 0,
    };
    if (s.writes) {
      rewriteLog(s.o.outDir, state.history);
      truncateSteps(s.o.outDir, state.epoch * s.itersPerEpoch + state.stepInEpoch);
    }
    s.log(
      `resuming ${s.o.modelName} from ${file}: epoch ${state.epoch + 1}/${s.recipe.epochs}${state.stepInEpoch ? `, step ${state.stepInEpoch}/${s.itersPerEpoch}` : ''}, best ${pct(state.bestAcc)}`,
    );
    return state;
  } finally {
    ck.dispose();
  }
}

/**
 * A finished cosine run ends at its minimum learning rate; more epochs would silently train on
 * at that rate, which no one means. Refused with what to do instead (multistep and constant
 * schedules do not depend on the run's length, so those may be extended).
 */
export function checkExtension(file: string, m: Pick<CheckpointMeta, 'epoch' | 'recipe' | 'globalStep' | 'itersPerEpoch'>, epochs: number): void {
  if (m.epoch < m.recipe.epochs || epochs <= m.recipe.epochs || m.recipe.schedule.type !== 'cosine') return;
  const endLr = learningRate(m.recipe.schedule, { baseLr: m.recipe.optimizer.lr, epochs: m.recipe.epochs, itersPerEpoch: m.itersPerEpoch }, m.globalStep - 1);
  throw new Error(
    `${file} is a finished run of ${m.recipe.epochs} epoch(s) whose cosine schedule ended at lr ${endLr.toPrecision(2)}; ` +
      `--epochs ${epochs} would train ${epochs - m.recipe.epochs} more at that rate. Start a new run (another --out) with --epochs ${epochs} instead`,
  );
}

/**
 * Per-step loss and hit counts of one epoch, kept on the device (float64, so the running sums
 * come out bit-identical however the epoch is cut into intervals or resumed) and read in one
 * transfer per logging interval.
 */
class EpochMeter {
  /** (2, steps): row 0 the mean loss of each step, row 1 its correct predictions. */
  readonly values: Tensor;
  /** Batch size and learning rate of each step (known on the host without asking the device). */
  readonly sizes: number[] = [];
  readonly lrs: number[] = [];

  constructor(steps: number, device: Device) {
    this.values = t.zeros([2, steps], { dtype: 'float64', device });
  }

  record(step: number, loss: Tensor, hits: Tensor, size: number, lr: number): void {
    t.tidy(() => {
      t.copy_(t.select(t.select(this.values, 0, 0), 0, step), loss);
      t.copy_(t.select(t.select(this.values, 0, 1), 0, step), hits);
    });
    this.sizes[step] = size;
    this.lrs[step] = lr;
  }

  /** The loss of one step (waits for the device). */
  lossAt(step: number): number {
    return t.tidy(() => t.select(t.select(this.values, 0, 0), 0, step).item());
  }

  /** Losses and hits of steps [from, to) in one transfer. */
  read(from: number, to: number): { loss: Float64Array; hits: Float64Array } {
    const flat = t.tidy(() => t.slice(this.values, 1, from, to).contiguous().to('cpu'));
    try {
      const d = flat.dataSync() as Float64Array;
      return { loss: d.slice(0, to - from), hits: d.slice(to - from) };
    } finally {
      flat.dispose();
    }
  }

  dispose(): void {
    this.values.dispose();
  }
}

/** Runs the rest of the current epoch; evaluates and checkpoints at its end, or checkpoints and returns on Ctrl-C. */
async function trainEpoch(s: Session, state: RunState): Promise<'done' | 'interrupted'> {
  const { o, recipe, itersPerEpoch: n } = s;
  const epochStart = performance.now();
  const e = state.epoch + 1;
  const shuffleAtStart = t.keep(s.shuffle.getState());
  const full = t.keep(epochOrder(s.trainSet.count, s.shuffle, s.device));
  const order = o.hooks?.shard ? t.keep(t.tidy(() => o.hooks!.shard!.select(full))) : full;
  const meter = new EpochMeter(n, s.device);
  const sums = { ...(state.partial ?? { lossSum: 0, correct: 0, seen: 0, seconds: 0 }) };
  const carried = sums.seconds;
  const seenAtStart = sums.seen;
  const everySteps = o.logEvery?.steps ?? Math.max(1, Math.round(n / 10));
  const everySeconds = o.logEvery?.seconds ?? 30;
  const trainStart = performance.now();
  let read = state.stepInEpoch;
  let readAt = trainStart;
  let lastLoss = NaN,
    lastIps = NaN;

  /** Reads the steps since the last read into the epoch's sums; writes steps.jsonl and the progress line. */
  const flush = (): void => {
    const upTo = state.stepInEpoch;
    if (upTo === read) return;
    const { loss, hits } = meter.read(read, upTo);
    let lossSum = 0,
      correct = 0,
      seen = 0;
    for (let i = 0; i < upTo - read; i++) {
      const step = read + i;
      const value = loss[i]!;
      if (!Number.isFinite(value)) {
        throw new NonFiniteLossError(
          `training stopped: the loss is ${value} at epoch ${e}, step ${step + 1}/${n} (global step ${state.globalStep - upTo + step + 1}, lr ${meter.lrs[step]!.toPrecision(3)}). ` +
            (state.history.length
              ? `The last good checkpoint (end of epoch ${state.history.length}, best test accuracy ${pct(state.bestAcc)}) is intact at ${s.ckptFile}`
              : 'No epoch had completed, so no checkpoint was written') +
            '; a lower learning rate or gradient clipping may help.',
        );
      }
      const size = meter.sizes[step]!;
      sums.lossSum += value * size;
      sums.correct += hits[i]!;
      sums.seen += size;
      lossSum += value * size;
      correct += hits[i]!;
      seen += size;
    }
    const now = performance.now();
    const seconds = (now - readAt) / 1000;
    lastLoss = lossSum / seen;
    lastIps = seen / Math.max(seconds, 1e-9);
    const rec: StepRecord = {
      epoch: e,
      step: upTo,
      steps: n,
      progress: state.epoch + upTo / n,
      trainLoss: lastLoss,
      trainAcc: correct / seen,
      lr: meter.lrs[upTo - 1]!,
      imgPerSec: lastIps,
      elapsedS: state.elapsedS + (now - s.started) / 1000,
    };
    if (s.writes) appendSteps(o.outDir, rec);
    o.onInterval?.(rec);
    if (o.progressLines) {
      const left = ((n - upTo) * seconds) / (upTo - read);
      s.log(`epoch ${e}/${recipe.epochs} step ${upTo}/${n}: loss ${lastLoss.toFixed(4)}, ${lastIps.toFixed(0)} img/s, epoch ETA ${formatDuration(left)}`);
    }
    read = upTo;
    readAt = now;
  };

  s.progress.start(e, recipe.epochs, n, state.stepInEpoch);
  try {
    while (state.stepInEpoch < n) {
      const step = state.stepInEpoch;
      trainStep(s, state, meter, order);
      const onStep = o.onStep;
      if (onStep)
        onStep({
          epoch: state.epoch,
          step,
          globalStep: state.globalStep,
          get loss() {
            return meter.lossAt(step);
          },
        });
      const now = performance.now();
      if (state.stepInEpoch % everySteps === 0 || state.stepInEpoch === n || now - readAt >= everySeconds * 1000) flush();
      s.progress.update(state.stepInEpoch, lastLoss, lastIps);
      await yieldToEvents();
      if (o.stop?.aborted && state.stepInEpoch < n) {
        flush();
        state.partial = { ...sums, seconds: carried + (performance.now() - epochStart) / 1000 };
        s.trainedImages += sums.seen - seenAtStart;
        s.trainSeconds += (performance.now() - trainStart) / 1000;
        s.progress.stop();
        checkpoint(s, state, 'interrupt', shuffleAtStart);
        return 'interrupted';
      }
    }
    flush();
    s.progress.stop();
    const trainTime = (performance.now() - trainStart) / 1000;
    s.trainSeconds += trainTime;
    const imagesNow = sums.seen - seenAtStart;
    s.trainedImages += imagesNow;
    if (o.progressLines) s.log(`evaluating on ${s.testSet.count.toLocaleString('en-US')} test images ...`);
    let evalLineAt = performance.now();
    const ev = evaluate(s.model, s.testSet, {
      batchSize: recipe.evalBatchSize,
      mean: recipe.augment.mean,
      std: recipe.augment.std,
      amp: s.amp,
      channelsLast: o.channelsLast,
      onProgress: o.progressLines
        ? (done, total) => {
            if (done < total && performance.now() - evalLineAt >= everySeconds * 1000) {
              evalLineAt = performance.now();
              s.log(`evaluating: ${done.toLocaleString('en-US')}/${total.toLocaleString('en-US')} test images`);
            }
          }
        : undefined,
    });
    state.bestAcc = Math.max(state.bestAcc, ev.accuracy);
    const rec: EpochRecord = {
      epoch: e,
      lr: meter.lrs[n - 1]!,
      trainLoss: sums.lossSum / sums.seen,
      trainAcc: sums.correct / sums.seen,
      testLoss: ev.loss,
      testAcc: ev.accuracy,
      bestAcc: state.bestAcc,
      seconds: carried + (performance.now() - epochStart) / 1000,
      imgPerSec: imagesNow / Math.max(trainTime, 1e-9),
      dataset: s.trainSet.name,
    };
    state.history.push(rec);
    state.epoch = e;
    state.stepInEpoch = 0;
    state.partial = null;
    const shuffleNow = s.shuffle.getState();
    try {
      checkpoint(s, state, 'epoch', shuffleNow);
    } finally {
      shuffleNow.dispose();
    }
    if (s.writes) {
      appendLog(o.outDir, rec);
      // Kept current every epoch so `kshare report` also reads unfinished runs.
      writeJsonAtomic(path.join(o.outDir, SUMMARY_FILE), summarize(s, state, e < recipe.epochs ? 'running' : 'completed'));
    }
    const left = (recipe.epochs - e) * rec.seconds;
    s.log(
      `epoch ${e}/${recipe.epochs}: train loss ${rec.trainLoss.toFixed(4)}, train acc ${pct(rec.trainAcc)}, test acc ${pct(rec.testAcc)} (best ${pct(state.bestAcc)}), ` +
        `lr ${rec.lr.toPrecision(3)}, ${rec.imgPerSec.toFixed(0)} img/s, ${formatDuration(rec.seconds)}${left > 0 ? `, about ${formatDuration(left)} left` : ''}`,
    );
    return 'done';
  } finally {
    s.progress.stop();
    meter.dispose();
    if (order !== full) order.dispose();
    full.dispose();
    shuffleAtStart.dispose();
  }
}

/** One optimisation step on batch `state.stepInEpoch` of `order`; its loss and hits go to the meter, nothing is read back. */
function trainStep(s: Session, state: RunState, meter: EpochMeter, order: Tensor): void {
  const { recipe, o } = s;
  const step = state.stepInEpoch;
  const lr = learningRate(recipe.schedule, s.schedule, state.globalStep);
  s.optimizer.setLr(lr);
  t.tidy(() => {
    const { images, labels } = takeBatch(s.trainSet, order, step, recipe.batchSize);
    const { x, target } = s.augment.apply(images, labels);
    const input = o.channelsLast ? x.contiguous('channels_last') : x;
    const logits = t.autocast({ device: 'cuda', dtype: 'float16', enabled: s.amp }, () => s.model.forward(input)).to('float32');
    const loss = t.crossEntropy(logits, target);
    s.scaler.scale(loss).backward();
    o.hooks?.afterBackward?.(s.params, { epoch: state.epoch, step, globalStep: state.globalStep });
    scaledStep(s.scaler, s.optimizer, s.params, recipe.clipGradNorm);
    s.optimizer.zeroGrad();
    t.noGrad(() => {
      const truth = target.rank === 2 ? t.argmax(target, 1) : target;
      meter.record(step, loss.detach(), t.sum(t.eq(t.argmax(logits, 1), truth)), labels.dim(0), lr);
    });
  });
  state.stepInEpoch++;
  state.globalStep++;
}

/** Writes <out>/checkpoint.safetensors for `state`; `shuffleState` is the data-order generator as of the start of epoch `state.epoch`. */
function checkpoint(s: Session, state: RunState, reason: 'epoch' | 'interrupt', shuffleState: Tensor): void {
  if (!s.writes) return;
  const rngGlobal = t.getRngState();
  const params = s.augParams.getState();
  const noiseState = s.noise.getState();
  try {
    saveCheckpoint(s.ckptFile, {
      model: s.model,
      optimizer: s.optimizer,
      scalerState: s.amp ? s.scaler.stateDict() : null,
      rng: { globalCpu: rngGlobal.cpu, globalCuda: rngGlobal.cuda, shuffle: shuffleState, params, noise: noiseState },
      meta: {
        modelName: s.o.modelName,
        modelConfig: s.o.modelConfig ?? null,
        classes: s.trainSet.classes,
        dataset: s.trainSet.name,
        datasetSpec: s.o.datasetSpec ?? null,
        recipe: s.recipe,
        seed: s.seed,
        itersPerEpoch: s.itersPerEpoch,
        reason,
        epoch: state.epoch,
        stepInEpoch: state.stepInEpoch,
        globalStep: state.globalStep,
        partial: state.partial,
        bestAcc: state.bestAcc,
        history: state.history,
        elapsedS: state.elapsedS + (performance.now() - s.started) / 1000,
      },
    });
  } finally {
    t.dispose([rngGlobal.cpu, rngGlobal.cuda, params, noiseState]);
  }
}

function summarize(s: Session, state: RunState, status: TrainSummary['status']): TrainSummary {
  return {
    status,
    model: s.o.modelName,
    dataset: s.trainSet.name,
    recipe: s.recipe.name,
    seed: s.seed,
    device: s.device,
    epochs: s.recipe.epochs,
    epochsDone: state.history.length,
    ...(status === 'interrupted' ? { interruptedAt: { epoch: state.epoch + 1, step: state.stepInEpoch, steps: s.itersPerEpoch } } : {}),
    bestAcc: state.bestAcc,
    finalAcc: state.history[state.history.length - 1]?.testAcc ?? 0,
    trainableParams: s.counts.trainable,
    unsharedParams: s.counts.unshared,
    trainImages: s.trainSet.count,
    testImages: s.testSet.count,
    seconds: (performance.now() - s.started) / 1000,
    imgPerSec: s.trainedImages / Math.max(s.trainSeconds, 1e-9),
    checkpoint: s.ckptFile,
    history: state.history,
  };
}

function finish(s: Session, state: RunState, status: TrainSummary['status']): TrainSummary {
  const summary = summarize(s, state, status);
  if (s.writes) writeJsonAtomic(path.join(s.o.outDir, SUMMARY_FILE), summary);
  return summary;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(2)}%`;
}
