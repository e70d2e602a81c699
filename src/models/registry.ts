// The model registry: the paper's models by their original names, user models added by a
// registration call or a JSON config file, and registry-style names parsed on demand.
import { readFileSync } from 'node:fs';
import type { Module } from '../nn/index.js';
import { validateConfig, buildFromConfig, describeConfig, architectures, inputSpecOf, recipeOf, cpuMemoryFormatOf, type ModelConfig } from './config.js';
import { cifarInput, IMAGENET_NORM, type CpuMemoryFormat, type InputSpec } from './spec.js';

export type ModelFactory = (opts: { classes: number }) => Module;

export interface ModelEntry {
  name: string;
  description: string;
  /** The config, or null for models registered with a factory function. */
  config: ModelConfig | null;
}

export interface CreateModelOptions {
  /** Number of output classes (default 10). */
  classes?: number;
  /** Fields that override the registered config (e.g. { preact: true }); config models only. */
  overrides?: Record<string, unknown>;
}

const entries = new Map<string, { description: string; config: ModelConfig | null; factory: ModelFactory | null }>();

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Adds a model under `name` (replacing an earlier one of that name). */
export function registerModel(name: string, spec: ModelConfig | ModelFactory, description?: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) throw new Error(`registerModel: bad model name ${JSON.stringify(name)} (letters, digits, _ . -)`);
  if (typeof spec === 'function') {
    entries.set(name, { description: description ?? 'user model', config: null, factory: spec });
    return;
  }
  const config = validateConfig(spec, `model '${name}'`);
  entries.set(name, { description: description ?? describeConfig(config), config, factory: null });
}

/** Registered models in registration order. */
export function listModels(): ModelEntry[] {
  return [...entries].map(([name, e]) => ({ name, description: e.description, config: e.config }));
}

/** Configs for registry-style names not registered explicitly (e.g. convmixer_128_8_k7_p2_shared_dw). */
export function configFromName(name: string): ModelConfig | null {
  for (const spec of architectures()) {
    const c = spec.names.parse(name);
    if (c) return { architecture: spec.architecture, ...c };
  }
  return null;
}

/** The name patterns every architecture accepts, in words. */
export function namePatterns(): string[] {
  return architectures().map((s) => s.names.pattern);
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** Registered names close to `name`, closest first. */
export function suggestModels(name: string, max = 3): string[] {
  return [...entries.keys()]
    .map((n) => ({ n, d: editDistance(name, n) - (n.startsWith(name) || name.startsWith(n) ? 2 : 0) }))
    .filter((x) => x.d <= Math.max(2, Math.floor(name.length / 4)))
    .sort((a, b) => a.d - b.d)
    .slice(0, max)
    .map((x) => x.n);
}

/** The config a name resolves to (registered or parsed), or null for factory models. */
export function modelConfig(name: string): ModelConfig | null {
  const e = entries.get(name);
  if (e) return e.config;
  const c = configFromName(name);
  if (c) return c;
  throw unknownModel(name);
}

function unknownModel(name: string): Error {
  const close = suggestModels(name);
  const hint = close.length ? ` Did you mean ${close.map((c) => `'${c}'`).join(' or ')}?` : '';
  return new Error(`unknown model '${name}'.${hint} Known models: ${[...entries.keys()].join(', ')} (or a pattern like ${namePatterns().join(', ')})`);
}

/** Builds a registered (or registry-style) model with fresh PyTorch-default weights. */
export function createModel(name: string, opts: CreateModelOptions = {}): Module {
  const classes = opts.classes ?? 10;
  if (!Number.isInteger(classes) || classes < 1) throw new RangeError(`createModel: classes must be a positive integer, got ${classes}`);
  const e = entries.get(name);
  if (e?.factory) {
    if (opts.overrides && Object.keys(opts.overrides).length)
      throw new Error(`createModel: '${name}' is registered with a factory; it takes no config overrides`);
    return e.factory({ classes });
  }
  let config = e?.config ?? configFromName(name);
  if (!config) throw unknownModel(name);
  if (opts.overrides) config = validateConfig({ ...config, ...opts.overrides }, `model '${name}' with overrides`);
  return buildFromConfig(config, classes);
}

/**
 * Registers the model(s) of a JSON file: one config with a "name" field, an array of them,
 * or { "models": [...] }. Returns the registered names.
 */
export function loadModelConfigFile(file: string): string[] {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`model config ${file}: ${(e as Error).message}`);
  }
  const list = Array.isArray(raw)
    ? raw
    : raw && typeof raw === 'object' && Array.isArray((raw as { models?: unknown }).models)
      ? (raw as { models: unknown[] }).models
      : [raw];
  const names: string[] = [];
  list.forEach((item, i) => {
    const where = `model config ${file}${list.length > 1 ? ` [${i}]` : ''}`;
    const name = (item as { name?: unknown } | null)?.name;
    if (typeof name !== 'string') throw new Error(`${where}: missing "name" (a string)`);
    const config = validateConfig(item, where, ['name']);
    registerModel(name, config);
    names.push(name);
  });
  return names;
}

/**
 * The input a model trains with (its architecture's size and normalisation), by registered or
 * registry-style name; models without a config (factories, unknown names) get CIFAR-sized
 * input with ImageNet statistics, the ConvMixer recipe's.
 */
export function modelInputSpec(name: string, config: unknown = null): InputSpec {
  let c: ModelConfig | null = null;
  try {
    c = entries.has(name) ? entries.get(name)!.config : configFromName(name);
  } catch {
    /* fall through */
  }
  c ??= config ? validateConfig(config, `model '${name}'`) : null;
  return c ? inputSpecOf(c) : cifarInput(IMAGENET_NORM);
}

/** A model's config: registered, registry-style name, or the given (stored) one; null for factory models. */
function configOf(name: string, config: unknown): ModelConfig | null {
  return entries.get(name)?.config ?? configFromName(name) ?? (config ? validateConfig(config, `model '${name}'`) : null);
}

/** The memory format CPU inference runs a model in (its architecture's choice; channels_last for factory models). */
export function modelCpuMemoryFormat(name: string, config: unknown = null): CpuMemoryFormat {
  const c = configOf(name, config);
  return c ? cpuMemoryFormatOf(c) : 'channels_last';
}

/**
 * Whether `kshare train` and sweeps train a model in channels_last when not told: on CPU where its
 * architecture's CPU memory format is channels_last (NCHW for ConvMixer, where kshare's fused
 * kernels run: its 256/8 step took 293.5 ms NCHW and 397.0 channels-last, bench/results/cpu-kernels.json;
 * SE-ResNet d=2's step x1.04-1.05 faster in channels-last with its 3x3 convolutions on AMX, x1.09-1.10 on
 * oneDNN's, bench/results/layout-ab.json and its notes), never on other devices.
 */
export function trainsChannelsLast(device: string, name: string, config: unknown = null): boolean {
  return device === 'cpu' && modelCpuMemoryFormat(name, config) === 'channels_last';
}

/** The recipe a model trains with when none is named (its architecture's; 'convmixer' for factory models). */
export function modelRecipe(name: string, config: unknown = null): string {
  const c = configOf(name, config);
  return c ? recipeOf(c) : 'convmixer';
}

// ---- every architecture's built-in names, in the order of src/models/architectures.ts ----
for (const spec of architectures()) {
  for (const [name, config, description] of spec.names.builtins) {
    registerModel(name, { architecture: spec.architecture, ...config, ...(description ? { description } : {}) });
  }
}
