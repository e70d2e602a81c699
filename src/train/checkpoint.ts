// Training checkpoints: one safetensors file (written to a temporary name, then renamed) with
// the model's tensors (shared ones once), the optimiser state, every random generator's
// state, and a JSON record of where the run stands. Loading validates before touching anything.
import { existsSync } from 'node:fs';
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { saveSafetensors, loadSafetensors, readSafetensorsHeader, type SafetensorsHeader } from '../models/safetensors.js';
import { uniqueState, expandAliases, parseAliases, ALIASES_KEY } from '../models/weights.js';
import { validateConfig, type ModelConfig } from '../models/config.js';
import { modelConfig } from '../models/registry.js';
import { checkStoredConfig, stateShapes, STORED_CONFIG_BOUNDS } from '../models/stored-config.js';
import { validateRecipe } from './recipe.js';
import type { OptimizerState } from './optim/index.js';
import type { AnyOptimizer } from './build-optimizer.js';
import type { Recipe } from './recipe.js';

export const CHECKPOINT_KEY = 'kshare.checkpoint';
const MODEL = 'model/';
const OPTIM = 'optimizer/';
const RNG = 'rng/';

/** One line of log.jsonl. */
export interface EpochRecord {
  epoch: number;
  lr: number;
  trainLoss: number;
  trainAcc: number;
  testLoss: number;
  testAcc: number;
  bestAcc: number;
  seconds: number;
  imgPerSec: number;
  dataset: string;
}

export interface CheckpointMeta {
  format: 1;
  modelName: string;
  /** The model's registry config (to rebuild it), or null for factory models. */
  modelConfig: unknown;
  classes: string[];
  dataset: string;
  /** The --dataset given to `train` (cifar10, a folder...), or null. */
  datasetSpec: string | null;
  recipe: Recipe;
  seed: number;
  /** Epochs completed. */
  epoch: number;
  /** Batches of epoch `epoch` already done (non-zero only for an interrupted epoch). */
  stepInEpoch: number;
  globalStep: number;
  itersPerEpoch: number;
  /** Running sums of the interrupted epoch, so its log line comes out as without the interruption. */
  partial: { lossSum: number; correct: number; seen: number; seconds: number } | null;
  bestAcc: number;
  history: EpochRecord[];
  /** Seconds of training and evaluation up to this checkpoint (absent in older checkpoints). */
  elapsedS?: number;
  optimizer: Omit<OptimizerState, 'tensors'>;
  scaler: { scale: number; growthTracker: number } | null;
  reason: 'epoch' | 'interrupt';
  savedAt: string;
  /** libtorch's CPU thread count when it was written (absent in older checkpoints): results are bit-exact only with the same count. */
  threads?: number;
}

export interface RngSnapshot {
  /** Global CPU stream (and CUDA when present). */
  globalCpu: Tensor;
  globalCuda: Tensor | null;
  /** Data order generator, as of the start of the current epoch (or the next epoch). */
  shuffle: Tensor;
  /** Augmentation parameter generator. */
  params: Tensor;
  /** Augmentation noise generator (training device). */
  noise: Tensor;
}

export interface CheckpointParts {
  model: Module;
  optimizer: AnyOptimizer;
  rng: RngSnapshot;
  meta: Omit<CheckpointMeta, 'format' | 'optimizer' | 'savedAt' | 'scaler'>;
  scalerState: { scale: number; growthTracker: number } | null;
}

export function saveCheckpoint(file: string, p: CheckpointParts): void {
  const tensors = new Map<string, Tensor>();
  const { tensors: modelTensors, aliases } = uniqueState(p.model);
  for (const [k, v] of modelTensors) tensors.set(MODEL + k, v);
  const opt = p.optimizer.stateDict();
  try {
    opt.tensors.forEach((rec, i) => {
      for (const [k, v] of Object.entries(rec)) tensors.set(`${OPTIM}${i}/${k}`, v);
    });
    tensors.set(`${RNG}global_cpu`, p.rng.globalCpu);
    if (p.rng.globalCuda) tensors.set(`${RNG}global_cuda`, p.rng.globalCuda);
    tensors.set(`${RNG}shuffle`, p.rng.shuffle);
    tensors.set(`${RNG}params`, p.rng.params);
    tensors.set(`${RNG}noise`, p.rng.noise);
    const meta: CheckpointMeta = {
      format: 1,
      ...p.meta,
      scaler: p.scalerState,
      optimizer: { kind: opt.kind, step: opt.step, groups: opt.groups },
      savedAt: new Date().toISOString(),
      threads: t.runtimeInfo().numThreads,
    };
    const prefixed: Record<string, string[]> = {};
    for (const [k, names] of Object.entries(aliases)) prefixed[MODEL + k] = names.map((n) => MODEL + n);
    saveSafetensors(file, tensors, { format: 'pt', [CHECKPOINT_KEY]: JSON.stringify(meta), [ALIASES_KEY]: JSON.stringify(prefixed) });
  } finally {
    for (const rec of opt.tensors) t.dispose(rec);
  }
}

export interface LoadedCheckpoint {
  file: string;
  meta: CheckpointMeta;
  /** Model state by every state-dict name (aliases expanded), CPU tensors. */
  model: Map<string, Tensor>;
  optimizer: OptimizerState;
  rng: RngSnapshot;
  /** Frees the loaded tensors. */
  dispose(): void;
}

/**
 * Reads and checks a checkpoint's metadata from its header alone (no tensor is loaded): the
 * JSON record, its recipe, and the model config against the shapes of the tensors in the file.
 * Everything that decides what gets built or allocated is checked here, before anything is.
 */
export function readCheckpointMeta(file: string): { meta: CheckpointMeta; header: SafetensorsHeader } {
  if (!existsSync(file)) throw new Error(`checkpoint ${file} does not exist`);
  const header = readSafetensorsHeader(file);
  const raw = header.metadata[CHECKPOINT_KEY];
  if (raw === undefined)
    throw new Error(
      `${file} is a safetensors file but not a kshare training checkpoint (no '${CHECKPOINT_KEY}' metadata; a plain weights file cannot be resumed)`,
    );
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error(`${file}: checkpoint metadata is not valid JSON`);
  }
  return { meta: validateCheckpointMeta(parsed, file, header), header };
}

/** The config a checkpoint's model is built from: the stored one, else the registry's (null for factory models). */
export function storedModelConfig(meta: Pick<CheckpointMeta, 'modelName' | 'modelConfig'>, file: string): ModelConfig | null {
  if (meta.modelConfig !== null && meta.modelConfig !== undefined)
    return validateConfig(meta.modelConfig, `${file}: model '${meta.modelName}' recorded in the checkpoint`);
  try {
    return modelConfig(meta.modelName);
  } catch {
    return null; // an unknown name fails when the model is built, before any allocation
  }
}

function validateCheckpointMeta(raw: unknown, file: string, header: SafetensorsHeader): CheckpointMeta {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${file}: checkpoint metadata must be a JSON object`);
  const meta = raw as CheckpointMeta;
  if (meta.format !== 1) throw new Error(`${file}: checkpoint format ${JSON.stringify(meta.format)} is not supported (expected 1)`);
  for (const k of ['modelName', 'epoch', 'stepInEpoch', 'globalStep', 'recipe', 'optimizer', 'history', 'seed'] as const) {
    if (meta[k] === undefined) throw new Error(`${file}: checkpoint metadata lacks '${k}'`);
  }
  const bad = (field: string, what: string, v: unknown): never => {
    throw new Error(`${file}: checkpoint metadata '${field}' must be ${what}, got ${JSON.stringify(v)?.slice(0, 80)}`);
  };
  const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (typeof meta.modelName !== 'string' || !meta.modelName) bad('modelName', 'a model name', meta.modelName);
  for (const k of ['epoch', 'stepInEpoch', 'globalStep', 'itersPerEpoch', 'seed'] as const) if (!count(meta[k])) bad(k, 'a non-negative integer', meta[k]);
  if (
    !Array.isArray(meta.classes) ||
    meta.classes.length < 1 ||
    meta.classes.length > STORED_CONFIG_BOUNDS.classes ||
    !meta.classes.every((c) => typeof c === 'string')
  ) {
    bad('classes', `a list of 1 to ${STORED_CONFIG_BOUNDS.classes} class names`, Array.isArray(meta.classes) ? `${meta.classes.length} entries` : meta.classes);
  }
  if (!Array.isArray(meta.history)) bad('history', 'a list of epoch records', meta.history);
  if (typeof meta.bestAcc !== 'number' || !Number.isFinite(meta.bestAcc)) bad('bestAcc', 'a number', meta.bestAcc);
  if (typeof meta.dataset !== 'string') bad('dataset', 'a string', meta.dataset);
  if (meta.threads !== undefined && !(Number.isInteger(meta.threads) && meta.threads >= 1)) bad('threads', 'a positive integer', meta.threads);
  // The recipe decides normalisation, batch sizes and the optimiser: checked like a recipe file.
  meta.recipe = validateRecipe(meta.recipe, `${file}: the checkpoint's recipe`);
  const config = storedModelConfig(meta, file);
  if (config) checkStoredConfig(config, meta.classes.length, stateShapes(file, header, MODEL), `${file}: model '${meta.modelName}'`);
  return meta;
}

/** Throws naming the first tensor holding NaN or infinity (e.g. offsets of two tensors swapped in the file). */
export function assertFinite(file: string, tensors: Map<string, Tensor>): void {
  for (const [name, v] of tensors) {
    if (v.dtype !== 'float32' && v.dtype !== 'float16' && v.dtype !== 'bfloat16' && v.dtype !== 'float64') continue;
    if (v.size === 0) continue;
    const ok = t.tidy(() => t.all(t.isfinite(v)).item());
    if (!ok)
      throw new Error(
        `${file}: tensor '${name}' holds NaN or infinite values; the file is damaged (or the run diverged before it was written) and cannot be used`,
      );
  }
}

/** Reads and checks a checkpoint file; the caller restores from it and then disposes it. */
export function readCheckpoint(file: string): LoadedCheckpoint {
  const { meta } = readCheckpointMeta(file);
  const { tensors, metadata } = loadSafetensors(file);
  const all = [...tensors.values()];
  try {
    assertFinite(file, tensors);
    const model = new Map<string, Tensor>();
    const optTensors: Record<string, Tensor>[] = [];
    const rng: Partial<Record<string, Tensor>> = {};
    for (const [k, v] of tensors) {
      if (k.startsWith(MODEL)) model.set(k, v);
      else if (k.startsWith(OPTIM)) {
        const m = /^optimizer\/(\d+)\/(.+)$/.exec(k);
        if (!m) throw new Error(`${file}: bad optimizer entry '${k}'`);
        (optTensors[+m[1]!] ??= {})[m[2]!] = v;
      } else if (k.startsWith(RNG)) rng[k.slice(RNG.length)] = v;
      else throw new Error(`${file}: unexpected tensor '${k}' in a checkpoint`);
    }
    const expanded = expandAliases(file, model, parseAliases(file, metadata));
    const modelState = new Map<string, Tensor>();
    for (const [k, v] of expanded) modelState.set(k.slice(MODEL.length), v);
    for (const name of ['global_cpu', 'shuffle', 'params', 'noise']) {
      if (!rng[name]) throw new Error(`${file}: checkpoint lacks the '${name}' random generator state`);
    }
    // Parameters without optimiser state (never stepped) have no entries: fill the gaps.
    for (let i = 0; i < optTensors.length; i++) optTensors[i] ??= {};
    return {
      file,
      meta,
      model: modelState,
      optimizer: { ...meta.optimizer, tensors: optTensors },
      rng: { globalCpu: rng.global_cpu!, globalCuda: rng.global_cuda ?? null, shuffle: rng.shuffle!, params: rng.params!, noise: rng.noise! },
      dispose() {
        t.dispose(all);
      },
    };
  } catch (e) {
    t.dispose(all);
    throw e;
  }
}

/** Loads the optimiser state, padding the per-parameter list when trailing parameters had none. */
export function restoreOptimizer(opt: AnyOptimizer, ck: LoadedCheckpoint): void {
  const count = opt.groups.reduce((n, g) => n + g.params.length, 0);
  const tensors = ck.optimizer.tensors.slice();
  if (tensors.length > count) throw new Error(`${ck.file}: optimizer state has ${tensors.length} parameters, the model has ${count}`);
  while (tensors.length < count) tensors.push({});
  try {
    opt.loadStateDict({ ...ck.optimizer, tensors });
  } catch (e) {
    throw new Error(`${ck.file}: ${(e as Error).message}`);
  }
}

export function restoreModel(model: Module, ck: LoadedCheckpoint): void {
  try {
    model.loadStateDict(ck.model);
  } catch (e) {
    throw new Error(`${ck.file} does not fit model '${ck.meta.modelName}': ${(e as Error).message}`);
  }
}
