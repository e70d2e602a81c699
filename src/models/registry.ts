// The model registry: the paper's models by their original names, user models added by a
// registration call or a JSON config file, and registry-style names parsed on demand.
import { readFileSync } from 'node:fs';
import type { Module } from '../nn/index.js';
import { validateConfig, buildFromConfig, describeConfig, type ModelConfig } from './config.js';

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

const CONVMIXER_RE = /^convmixer_(\d+)_(\d+)(?:_k(\d+))?(?:_p(\d+))?(_shared(?:_dw|_pw)?)?$/;
const SERESNET_RE = /^se_resnet_d_(\d+)(_full_shared|_unshared|_shared_([123]+))?$/;

/** Configs for registry-style names not registered explicitly (e.g. convmixer_128_8_k7_p2_shared_dw). */
export function configFromName(name: string): ModelConfig | null {
  let m = CONVMIXER_RE.exec(name);
  if (m) {
    const sharing = ({ _shared: 'both', _shared_dw: 'depthwise', _shared_pw: 'pointwise' } as const)[m[5] as '_shared'] ?? 'none';
    return { architecture: 'convmixer', dim: +m[1]!, depth: +m[2]!, kernelSize: m[3] ? +m[3] : 9, patchSize: m[4] ? +m[4] : 1, sharing };
  }
  m = SERESNET_RE.exec(name);
  if (m) {
    const d = +m[1]!;
    // The original names: d = 2 alone is unshared, every other depth shares all stages.
    let share: [boolean, boolean, boolean] = d === 2 ? [false, false, false] : [true, true, true];
    if (m[2] === '_full_shared') share = [true, true, true];
    else if (m[2] === '_unshared') share = [false, false, false];
    else if (m[3]) share = [m[3].includes('1'), m[3].includes('2'), m[3].includes('3')];
    return { architecture: 'se_resnet', depth: d, share };
  }
  return null;
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
  return new Error(`unknown model '${name}'.${hint} Known models: ${[...entries.keys()].join(', ')} (or a pattern like convmixer_<dim>_<depth>[_k<k>][_p<p>][_shared|_shared_dw|_shared_pw], se_resnet_d_<d>[_full_shared|_unshared|_shared_<stages>])`);
}

/** Builds a registered (or registry-style) model with fresh PyTorch-default weights. */
export function createModel(name: string, opts: CreateModelOptions = {}): Module {
  const classes = opts.classes ?? 10;
  if (!Number.isInteger(classes) || classes < 1) throw new RangeError(`createModel: classes must be a positive integer, got ${classes}`);
  const e = entries.get(name);
  if (e?.factory) {
    if (opts.overrides && Object.keys(opts.overrides).length) throw new Error(`createModel: '${name}' is registered with a factory; it takes no config overrides`);
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
  const list = Array.isArray(raw) ? raw : raw && typeof raw === 'object' && Array.isArray((raw as { models?: unknown }).models) ? (raw as { models: unknown[] }).models : [raw];
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

// ---- the paper's models (original names) and a few smaller ones ----

const builtins: [string, ModelConfig][] = [
  ['convmixer_256_16', { architecture: 'convmixer', dim: 256, depth: 16, kernelSize: 9, patchSize: 1, sharing: 'none' }],
  ['convmixer_256_16_shared', { architecture: 'convmixer', dim: 256, depth: 16, kernelSize: 9, patchSize: 1, sharing: 'both' }],
  ['convmixer_256_8_k5_p2', { architecture: 'convmixer', dim: 256, depth: 8, kernelSize: 5, patchSize: 2, sharing: 'none' }],
  ['convmixer_256_8_k5_p2_shared', { architecture: 'convmixer', dim: 256, depth: 8, kernelSize: 5, patchSize: 2, sharing: 'both' }],
  ['convmixer_64_4_k5_p2', { architecture: 'convmixer', dim: 64, depth: 4, kernelSize: 5, patchSize: 2, sharing: 'none' }],
  ['convmixer_64_4_k5_p2_shared', { architecture: 'convmixer', dim: 64, depth: 4, kernelSize: 5, patchSize: 2, sharing: 'both' }],
  ['se_resnet_d_2', { architecture: 'se_resnet', depth: 2, share: [false, false, false] }],
  ['se_resnet_d_2_full_shared', { architecture: 'se_resnet', depth: 2, share: [true, true, true] }],
  ['se_resnet_d_2_shared_23', { architecture: 'se_resnet', depth: 2, share: [false, true, true], description: 'SE-ResNet d=2, stages 2+3 shared (the older original)' }],
  ...[3, 4, 6, 8, 10].map((d): [string, ModelConfig] => [`se_resnet_d_${d}`, { architecture: 'se_resnet', depth: d, share: [true, true, true] }]),
];
for (const [name, config] of builtins) registerModel(name, config);
