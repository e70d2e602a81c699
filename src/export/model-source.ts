// Where an export's model comes from: a registered model with fresh weights, or a checkpoint.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Module } from '../nn/module.js';
import { createModel, modelConfig, modelCpuMemoryFormat } from '../models/registry.js';
import type { CpuMemoryFormat } from '../models/spec.js';
import { buildFromConfig, validateConfig } from '../models/config.js';
import { CHECKPOINT_KEY, assertFinite, readCheckpoint, restoreModel } from '../train/checkpoint.js';
import { loadWeights } from '../models/weights.js';
import { readSafetensorsHeader } from '../models/safetensors.js';
import { checkStoredConfig, stateShapes, STORED_CONFIG_BOUNDS } from '../models/stored-config.js';
import { CIFAR10_CLASSES, CIFAR100_CLASSES } from '../data/cifar.js';
import { defaultInputSpec, validateInputSpec, type ModelInfo } from './model-info.js';

export interface ModelSource {
  model: Module;
  info: ModelInfo;
  /** The memory format CPU inference runs this model in (its architecture's choice). */
  cpuMemoryFormat: CpuMemoryFormat;
}

/** Class names for a class count: CIFAR-10's or CIFAR-100's when the count fits, numbered otherwise. */
export function defaultClassNames(n: number): string[] {
  if (n === CIFAR10_CLASSES.length) return [...CIFAR10_CLASSES];
  if (n === CIFAR100_CLASSES.length) return [...CIFAR100_CLASSES];
  return Array.from({ length: n }, (_, i) => `class ${i}`);
}

/** A registered model with freshly initialised weights (from the global seed), in eval mode. */
export function modelFromRegistry(name: string, o: { classes?: number; classNames?: string[] } = {}): ModelSource {
  const names = o.classNames ?? defaultClassNames(o.classes ?? 10);
  if (o.classes !== undefined && names.length !== o.classes) throw new Error(`${names.length} class names given for ${o.classes} classes`);
  const model = createModel(name, { classes: names.length });
  model.eval();
  return {
    model,
    info: { model: name, classes: names, params: model.numParameters(), input: defaultInputSpec(name) },
    cpuMemoryFormat: modelCpuMemoryFormat(name),
  };
}

/** Metadata keys of a plain weights file (`saveWeights`) that names its model. */
const MODEL_KEY = 'kshare.model';
const CLASSES_KEY = 'kshare.classes';
const INPUT_KEY = 'kshare.input';

function parseJson<T>(file: string, key: string, v: string): T {
  try {
    return JSON.parse(v) as T;
  } catch {
    throw new Error(`${file}: metadata '${key}' is not valid JSON`);
  }
}

/** A model rebuilt from a recorded config (user models) or, failing that, by registry name. */
function buildModel(name: string, config: unknown, classes: string[]): Module {
  if (config) return buildFromConfig(validateConfig(config, `model '${name}' recorded in the checkpoint`), classes.length);
  return createModel(name, { classes: classes.length });
}

/**
 * The model of a training checkpoint (`kshare train`'s checkpoint.safetensors: model name,
 * config, classes and the recipe's normalisation in its metadata), or of a weights file whose
 * metadata names its model ('kshare.model', optionally 'kshare.classes'), with its weights loaded.
 */
export function modelFromCheckpoint(file: string): ModelSource {
  if (!existsSync(file)) throw new Error(`checkpoint ${file}: no such file`);
  const header = readSafetensorsHeader(file);
  const meta = header.metadata;
  if (meta[CHECKPOINT_KEY] !== undefined) {
    const ck = readCheckpoint(file);
    try {
      const m = ck.meta;
      const model = buildModel(m.modelName, m.modelConfig, m.classes);
      try {
        restoreModel(model, ck);
      } catch (err) {
        model.dispose();
        throw err;
      }
      model.eval();
      const input = defaultInputSpec(m.modelName, m.modelConfig);
      const aug = m.recipe?.augment;
      if (aug?.mean && aug.std) {
        input.mean = [...aug.mean];
        input.std = [...aug.std];
      }
      const source = `checkpoint ${path.basename(file)}: ${m.epoch} epoch(s) on ${m.dataset}, best test accuracy ${(m.bestAcc * 100).toFixed(2)}%`;
      return {
        model,
        info: { model: m.modelName, classes: [...m.classes], params: model.numParameters(), input, source },
        cpuMemoryFormat: modelCpuMemoryFormat(m.modelName, m.modelConfig),
      };
    } finally {
      ck.dispose();
    }
  }
  const name = meta[MODEL_KEY];
  if (!name) {
    throw new Error(
      `${file} does not say which model it holds (neither a kshare training checkpoint nor a weights file with '${MODEL_KEY}' metadata); export a registered model with --model instead`,
    );
  }
  let classNames = defaultClassNames(10);
  if (meta[CLASSES_KEY] !== undefined) {
    const parsed = parseJson<unknown>(file, CLASSES_KEY, meta[CLASSES_KEY]);
    if (typeof parsed === 'number' && Number.isInteger(parsed) && parsed > 0 && parsed <= STORED_CONFIG_BOUNDS.classes) classNames = defaultClassNames(parsed);
    else if (Array.isArray(parsed) && parsed.length > 0 && parsed.every((c) => typeof c === 'string')) classNames = parsed as string[];
    else throw new Error(`${file}: metadata '${CLASSES_KEY}' must be a class count (at most ${STORED_CONFIG_BOUNDS.classes}) or a list of names`);
  }
  const input =
    meta[INPUT_KEY] === undefined ? undefined : validateInputSpec(parseJson<unknown>(file, INPUT_KEY, meta[INPUT_KEY]), `${file}: metadata '${INPUT_KEY}'`);
  // The name is data too (e.g. convmixer_40000_16): its config must fit the file's tensors before it is built.
  const config = modelConfig(name);
  if (config) checkStoredConfig(config, classNames.length, stateShapes(file, header), `${file}: model '${name}'`);
  const src = modelFromRegistry(name, { classNames });
  try {
    loadWeights(src.model, file);
    assertFinite(file, new Map(src.model.stateDict()));
  } catch (err) {
    src.model.dispose();
    throw err;
  }
  if (input) src.info.input = input;
  src.info.source = `weights file ${path.basename(file)}`;
  return src;
}
