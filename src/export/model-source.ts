// Where an export's model comes from: a registered model with fresh weights, or a checkpoint.
import { existsSync } from 'node:fs';
import type { Module } from '../nn/module.js';
import { createModel } from '../models/registry.js';
import { loadWeights } from '../models/weights.js';
import { readSafetensorsHeader } from '../models/safetensors.js';
import { CIFAR10_CLASSES, CIFAR100_CLASSES } from '../data/cifar.js';
import { defaultInputSpec, type InputSpec, type ModelInfo } from './model-info.js';

export interface ModelSource {
  model: Module;
  info: ModelInfo;
}

/** Class names for a class count: CIFAR-10's or CIFAR-100's when the count fits, numbered otherwise. */
export function defaultClassNames(n: number): string[] {
  if (n === CIFAR10_CLASSES.length) return [...CIFAR10_CLASSES];
  if (n === CIFAR100_CLASSES.length) return [...CIFAR100_CLASSES];
  return Array.from({ length: n }, (_, i) => `class ${i}`);
}

/** A registered model with freshly initialised weights, in eval mode. */
export function modelFromRegistry(name: string, o: { classes?: number; classNames?: string[] } = {}): ModelSource {
  const names = o.classNames ?? defaultClassNames(o.classes ?? 10);
  if (o.classes !== undefined && names.length !== o.classes) throw new Error(`${names.length} class names given for ${o.classes} classes`);
  const model = createModel(name, { classes: names.length });
  model.eval();
  return { model, info: { model: name, classes: names, params: model.numParameters(), input: defaultInputSpec(name) } };
}

/** Checkpoint metadata keys kshare's trainer writes (older or foreign files may use the short forms). */
const MODEL_KEYS = ['kshare.model', 'model'];
const CLASSES_KEYS = ['kshare.classes', 'classes'];
const INPUT_KEYS = ['kshare.input'];

function firstOf(meta: Record<string, string>, keys: string[]): string | undefined {
  for (const k of keys) if (meta[k] !== undefined) return meta[k];
  return undefined;
}

function parseJson<T>(file: string, key: string, v: string): T {
  try {
    return JSON.parse(v) as T;
  } catch {
    throw new Error(`checkpoint ${file}: metadata '${key}' is not valid JSON`);
  }
}

/** Builds the checkpoint's model (name and classes from its metadata) and loads its weights. */
export function modelFromCheckpoint(file: string): ModelSource {
  if (!existsSync(file)) throw new Error(`checkpoint ${file}: no such file`);
  const meta = readSafetensorsHeader(file).metadata;
  const name = firstOf(meta, MODEL_KEYS);
  if (!name) throw new Error(`checkpoint ${file} does not say which model it holds (no '${MODEL_KEYS[0]}' metadata); export a registered model with --model instead`);
  const rawClasses = firstOf(meta, CLASSES_KEYS);
  let classNames: string[];
  if (rawClasses === undefined) classNames = defaultClassNames(10);
  else {
    const parsed = parseJson<unknown>(file, CLASSES_KEYS[0]!, rawClasses);
    if (typeof parsed === 'number' && Number.isInteger(parsed) && parsed > 0) classNames = defaultClassNames(parsed);
    else if (Array.isArray(parsed) && parsed.length > 0 && parsed.every((c) => typeof c === 'string')) classNames = parsed as string[];
    else throw new Error(`checkpoint ${file}: metadata '${CLASSES_KEYS[0]}' must be a class count or a list of names`);
  }
  const src = modelFromRegistry(name, { classNames });
  try {
    loadWeights(src.model, file);
  } catch (err) {
    src.model.dispose();
    throw err;
  }
  const input = firstOf(meta, INPUT_KEYS);
  if (input !== undefined) src.info.input = parseJson<InputSpec>(file, INPUT_KEYS[0]!, input);
  return src;
}
