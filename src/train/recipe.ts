// Training recipes: JSON files in recipes/ (or anywhere) describing optimiser, schedule,
// augmentation and run length. Every field can be overridden with a dotted path
// (`optimizer.weightDecay=0.05`), and every value is checked with an error naming the field.
import { readFileSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { validateSchedule, type ScheduleConfig } from './schedule.js';
import { validateAugment, type AugmentConfig } from './augment/pipeline.js';

export type OptimizerConfig =
  | {
      type: 'adamw';
      lr: number;
      betas: [number, number];
      eps: number;
      weightDecay: number;
      /** ConvNeXt's parameter groups: 1-D tensors and biases get no weight decay. */
      noDecayOnNormsAndBiases: boolean;
    }
  | {
      type: 'sgd';
      lr: number;
      momentum: number;
      weightDecay: number;
      nesterov: boolean;
      dampening: number;
    };

export interface Recipe {
  name: string;
  description: string;
  /** Model used when the command line names none. */
  model: string;
  epochs: number;
  batchSize: number;
  evalBatchSize: number;
  /** Seed of model init, data order and augmentation; null draws one and records it. */
  seed: number | null;
  optimizer: OptimizerConfig;
  schedule: ScheduleConfig;
  /** Global L2 gradient-norm clip, or null. */
  clipGradNorm: number | null;
  /** Mixed precision (float16 autocast + loss scaling) on CUDA; ignored on CPU. */
  amp: boolean;
  augment: AugmentConfig;
  /** Use only the first N training / test images of each class (quick runs); null: all. */
  trainPerClass: number | null;
  testPerClass: number | null;
}

/** The recipes/ folder of this package (works from src/ and dist/src/). */
export function recipesDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, '../../recipes'), path.resolve(here, '../../../recipes')]) if (existsSync(p)) return p;
  return path.resolve(here, '../../../recipes');
}

export function listRecipes(): string[] {
  try {
    return readdirSync(recipesDir())
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .sort();
  } catch {
    return [];
  }
}

/** Reads a recipe by name (recipes/<name>.json) or from a file path, and validates it. */
export function loadRecipe(nameOrFile: string): Recipe {
  const isFile = nameOrFile.endsWith('.json') || nameOrFile.includes('/') || nameOrFile.includes(path.sep);
  const file = isFile ? path.resolve(nameOrFile) : path.join(recipesDir(), `${nameOrFile}.json`);
  if (!existsSync(file)) {
    const known = listRecipes();
    throw new Error(
      isFile ? `recipe file ${file} does not exist` : `unknown recipe '${nameOrFile}' (known: ${known.join(', ') || 'none'}; or give a path to a .json file)`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`recipe ${file}: ${(e as Error).message}`);
  }
  return validateRecipe(raw, `recipe ${file}`);
}

/** Parses "a.b.c=value": value as JSON when it parses (numbers, booleans, null, lists), else a string. */
export function parseOverride(spec: string): [string[], unknown] {
  const eq = spec.indexOf('=');
  if (eq <= 0) throw new Error(`override '${spec}' must look like field.path=value`);
  const keys = spec.slice(0, eq).trim().split('.');
  if (keys.some((k) => !k)) throw new Error(`override '${spec}' has an empty field name`);
  const text = spec.slice(eq + 1).trim();
  let value: unknown = text;
  try {
    value = JSON.parse(text);
  } catch {
    /* a bare string */
  }
  return [keys, value];
}

/** A copy of the recipe with fields replaced; unknown fields are an error naming them. */
export function applyOverrides(recipe: Recipe, overrides: [string[], unknown][]): Recipe {
  const copy = structuredClone(recipe) as unknown as Record<string, unknown>;
  for (const [keys, value] of overrides) {
    let obj: Record<string, unknown> = copy;
    for (let i = 0; i < keys.length - 1; i++) {
      const next = obj[keys[i]!];
      if (next === null || typeof next !== 'object' || Array.isArray(next)) {
        throw new Error(`override ${keys.join('.')}: '${keys.slice(0, i + 1).join('.')}' is not an object in recipe '${recipe.name}'`);
      }
      obj = next as Record<string, unknown>;
    }
    const last = keys[keys.length - 1]!;
    // Sub-objects that may be null (switched off) can be switched on with a whole object.
    if (!(last in obj)) throw new Error(`override ${keys.join('.')}: recipe '${recipe.name}' has no field '${keys.join('.')}'`);
    obj[last] = value;
  }
  return validateRecipe(copy, `recipe '${recipe.name}' with overrides`);
}

const TOP_KEYS = [
  'name',
  'description',
  'model',
  'epochs',
  'batchSize',
  'evalBatchSize',
  'seed',
  'optimizer',
  'schedule',
  'clipGradNorm',
  'amp',
  'augment',
  'trainPerClass',
  'testPerClass',
];
const AUG_KEYS = ['crop', 'cropPadding', 'hflip', 'randAugment', 'mean', 'std', 'randomErasing', 'cutout', 'mixup', 'labelSmoothing'];
const OPT_KEYS = {
  adamw: ['type', 'lr', 'betas', 'eps', 'weightDecay', 'noDecayOnNormsAndBiases'],
  sgd: ['type', 'lr', 'momentum', 'weightDecay', 'nesterov', 'dampening'],
};
const SCHED_KEYS = {
  cosine: ['type', 'minLr', 'warmupEpochs', 'warmupSteps', 'warmupStartLr'],
  multistep: ['type', 'milestones', 'gamma'],
  constant: ['type'],
};
const ERASE_KEYS = ['prob', 'minArea', 'maxArea', 'minAspect', 'maxAspect', 'mode', 'count'];
const MIX_KEYS = ['mixupAlpha', 'cutmixAlpha', 'prob', 'switchProb', 'correctLam'];

function onlyKeys(obj: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(obj)) if (!allowed.includes(k)) throw new Error(`${where}: unknown field '${k}' (known: ${allowed.join(', ')})`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}

/** Checks every field of a parsed recipe; the message names the field and what it should be. */
export function validateRecipe(raw: unknown, where: string): Recipe {
  if (!isObj(raw)) throw new Error(`${where}: a recipe must be a JSON object`);
  onlyKeys(raw, TOP_KEYS, where);
  const r = raw as unknown as Recipe;
  const need = (cond: boolean, field: string, what: string, v: unknown) => {
    if (!cond) throw new Error(`${where}: '${field}' must be ${what}, got ${JSON.stringify(v)}`);
  };
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) >= 1;
  const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
  need(typeof r.name === 'string' && r.name.length > 0, 'name', 'a non-empty string', r.name);
  need(typeof r.description === 'string', 'description', 'a string', r.description);
  need(typeof r.model === 'string' && r.model.length > 0, 'model', 'a model name', r.model);
  need(posInt(r.epochs), 'epochs', 'a positive integer', r.epochs);
  need(posInt(r.batchSize), 'batchSize', 'a positive integer', r.batchSize);
  need(posInt(r.evalBatchSize), 'evalBatchSize', 'a positive integer', r.evalBatchSize);
  need(r.seed === null || (Number.isInteger(r.seed) && r.seed >= 0 && r.seed < 2 ** 53), 'seed', 'a non-negative integer or null', r.seed);
  need(r.clipGradNorm === null || (num(r.clipGradNorm) && r.clipGradNorm > 0), 'clipGradNorm', 'a positive number or null', r.clipGradNorm);
  need(typeof r.amp === 'boolean', 'amp', 'true or false', r.amp);
  need(r.trainPerClass === null || posInt(r.trainPerClass), 'trainPerClass', 'a positive integer or null', r.trainPerClass);
  need(r.testPerClass === null || posInt(r.testPerClass), 'testPerClass', 'a positive integer or null', r.testPerClass);

  const o = r.optimizer as unknown;
  need(isObj(o) && (o.type === 'adamw' || o.type === 'sgd'), 'optimizer.type', '"adamw" or "sgd"', isObj(o) ? o.type : o);
  const opt = r.optimizer;
  onlyKeys(opt as unknown as Record<string, unknown>, OPT_KEYS[opt.type], `${where}: optimizer`);
  need(num(opt.lr) && opt.lr >= 0, 'optimizer.lr', 'a number >= 0', opt.lr);
  need(num(opt.weightDecay) && opt.weightDecay >= 0, 'optimizer.weightDecay', 'a number >= 0', opt.weightDecay);
  if (opt.type === 'adamw') {
    need(
      Array.isArray(opt.betas) && opt.betas.length === 2 && opt.betas.every((b) => num(b) && b >= 0 && b < 1),
      'optimizer.betas',
      'two numbers in [0, 1)',
      opt.betas,
    );
    need(num(opt.eps) && opt.eps >= 0, 'optimizer.eps', 'a number >= 0', opt.eps);
    need(typeof opt.noDecayOnNormsAndBiases === 'boolean', 'optimizer.noDecayOnNormsAndBiases', 'true or false', opt.noDecayOnNormsAndBiases);
  } else {
    need(num(opt.momentum) && opt.momentum >= 0, 'optimizer.momentum', 'a number >= 0', opt.momentum);
    need(typeof opt.nesterov === 'boolean', 'optimizer.nesterov', 'true or false', opt.nesterov);
    need(num(opt.dampening) && opt.dampening >= 0, 'optimizer.dampening', 'a number >= 0', opt.dampening);
  }

  const s = r.schedule as unknown;
  need(isObj(s) && typeof s.type === 'string' && s.type in SCHED_KEYS, 'schedule.type', '"cosine", "multistep" or "constant"', isObj(s) ? s.type : s);
  onlyKeys(s as Record<string, unknown>, SCHED_KEYS[r.schedule.type], `${where}: schedule`);
  validateSchedule(r.schedule, where);

  const a = r.augment as unknown;
  need(isObj(a), 'augment', 'an object', a);
  onlyKeys(a as Record<string, unknown>, AUG_KEYS, `${where}: augment`);
  for (const k of AUG_KEYS) if (!(k in (a as object))) throw new Error(`${where}: augment.${k} is missing`);
  const aug = r.augment;
  need(typeof aug.crop === 'boolean', 'augment.crop', 'true or false', aug.crop);
  need(num(aug.hflip), 'augment.hflip', 'a probability', aug.hflip);
  if (aug.randomErasing !== null) {
    need(isObj(aug.randomErasing), 'augment.randomErasing', 'an object or null', aug.randomErasing);
    onlyKeys(aug.randomErasing as unknown as Record<string, unknown>, ERASE_KEYS, `${where}: augment.randomErasing`);
  }
  if (aug.mixup !== null) {
    need(isObj(aug.mixup), 'augment.mixup', 'an object or null', aug.mixup);
    onlyKeys(aug.mixup as unknown as Record<string, unknown>, MIX_KEYS, `${where}: augment.mixup`);
    need(typeof aug.mixup.correctLam === 'boolean', 'augment.mixup.correctLam', 'true or false', aug.mixup.correctLam);
  }
  try {
    validateAugment(aug);
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
  return r;
}
