// Sweeps: a JSON spec names a recipe, overrides, models or one model with sharing plans, and
// seeds; every combination becomes an ordinary run folder trained by a `kshare train` child
// process (a crash stays in its run, and parallel jobs each get their own folder). A rerun of
// the same spec skips finished runs and resumes interrupted ones from their checkpoints.
import { existsSync, readFileSync, readdirSync, statSync, mkdirSync, appendFileSync } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelConfig, buildFromConfig, modelSummary, validateConfig, trainsChannelsLast, CONVMIXER_SHARING, type ModelConfig } from '../models/index.js';
import { parseSharingPlan, candidatePlans, type SharingPlan } from '../nn/index.js';
import { loadRecipe, applyOverrides, parseOverride, type Recipe } from './recipe.js';
import { readLog, writeJsonAtomic, formatDuration, CHECKPOINT_FILE, SUMMARY_FILE } from './run-log.js';
import type { TrainSummary } from './trainer.js';

/** What a sweep spec file holds (see docs/sweeps.md). */
export interface SweepSpec {
  name: string;
  description?: string;
  /** Recipe name (recipes/<name>.json) or a .json path, relative to the spec file. */
  recipe: string;
  /** Recipe overrides as in `kshare train --set`: ["epochs=3", ...] or { "epochs": 3, ... }. */
  set?: string[] | Record<string, unknown>;
  /** One model, or a list; each a registered name or an inline config with a "name". */
  model?: ModelItem;
  models?: ModelItem[];
  /** Sharing plans applied to every model; omitted: each model as it is. */
  plans?: PlanItem[];
  /** Seeds run for every configuration without its own "seeds". */
  seeds: number[];
  dataset: string;
  dataDir?: string;
  device?: string;
  threads?: number;
  channelsLast?: boolean;
  /** Output folder, relative to the spec file. */
  out: string;
}

export type ModelItem = string | ({ name: string; seeds?: number[] } & Record<string, unknown>);
export type PlanItem = string | { plan: string | SharingPlan; name?: string; seeds?: number[] };

/** One combination of model, plan and seed, and its run folder. */
export interface SweepRun {
  /** Folder name under <out>/runs: <config>-s<seed>. */
  id: string;
  /** Configuration key (what seeds are averaged over in reports). */
  config: string;
  /** Base model name as written in the spec. */
  model: string;
  /** The plan as written in the spec (text), or null when the model is used as it is. */
  plan: string | null;
  /** Model name registered for the run (the base name, or <base>.<plan>). */
  modelName: string;
  modelConfig: ModelConfig;
  seed: number;
  recipe: Recipe;
  dir: string;
  classes: number;
  trainableParams: number;
  unsharedParams: number;
  weightBytes: number;
  /** Multiply-accumulates per 32x32 image. */
  macs: number;
}

export interface SweepPlan {
  spec: SweepSpec;
  specFile: string;
  out: string;
  runs: SweepRun[];
  dataset: string;
  dataDir: string | null;
  device: string;
  threads: number | null;
  /** The spec's channelsLast, or null: each run then takes its model's CPU memory format (runChannelsLast). */
  channelsLast: boolean | null;
}

/** What <run>/sweep-run.json records, so reports know the configuration without the spec. */
export interface SweepRunRecord {
  sweep: string;
  id: string;
  config: string;
  model: string;
  plan: string | null;
  modelName: string;
  seed: number;
  classes: number;
  trainableParams: number;
  unsharedParams: number;
  weightBytes: number;
  macs: number;
}

export const SWEEP_FILE = 'sweep.json';
export const SWEEP_RUN_FILE = 'sweep-run.json';
export const RUNS_DIR = 'runs';
const MODEL_FILE = 'model.json';
const RECIPE_FILE = 'recipe.json';
const OUTPUT_FILE = 'train.log';

const SPEC_KEYS = [
  'name',
  'description',
  'recipe',
  'set',
  'model',
  'models',
  'plans',
  'seeds',
  'dataset',
  'dataDir',
  'device',
  'threads',
  'channelsLast',
  'out',
  '$comment',
];

const EXAMPLE =
  '{ "name": "plans", "recipe": "demo", "set": ["epochs=3"], "model": "convmixer_64_4_k5_p2", "plans": ["none", "both", "consecutive:2"], "seeds": [0, 1], "dataset": "cifar10", "out": "runs/plans" }';

class SpecError extends Error {}

function isObj(v: unknown): v is Record<string, unknown> {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}

/** Reads and checks a spec file; every error names the field, its value and what would fix it. */
export function readSweepSpec(file: string): SweepSpec {
  if (!existsSync(file)) throw new Error(`sweep spec ${file} does not exist (an example: ${EXAMPLE})`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`sweep spec ${file}: not valid JSON (${(e as Error).message})`);
  }
  return validateSweepSpec(raw, `sweep spec ${file}`);
}

export function validateSweepSpec(raw: unknown, where: string): SweepSpec {
  const fail = (field: string, value: unknown, fix: string): never => {
    throw new SpecError(`${where}: '${field}' ${value === undefined ? 'is missing' : `is ${JSON.stringify(value)}`}; ${fix}`);
  };
  if (!isObj(raw)) throw new SpecError(`${where}: a sweep spec must be a JSON object, e.g. ${EXAMPLE}`);
  for (const k of Object.keys(raw))
    if (!SPEC_KEYS.includes(k)) fail(k, raw[k], `unknown field (known: ${SPEC_KEYS.filter((x) => x !== '$comment').join(', ')})`);
  const s = raw as unknown as SweepSpec;
  const seedList = (v: unknown, field: string) => {
    if (!Array.isArray(v) || !v.length || !v.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 31))
      fail(field, v, 'give a non-empty list of non-negative integers, e.g. [0, 1]');
    if (new Set(v as number[]).size !== (v as number[]).length) fail(field, v, 'list each seed once');
  };
  if (typeof s.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(s.name))
    fail('name', s.name, 'give a short name of letters, digits, _ . - (it labels the report)');
  if (s.description !== undefined && typeof s.description !== 'string') fail('description', s.description, 'give a string or leave it out');
  if (typeof s.recipe !== 'string' || !s.recipe)
    fail('recipe', s.recipe, 'give a recipe name (demo, convmixer, seresnet) or a .json path relative to the spec');
  if (s.set !== undefined && !(Array.isArray(s.set) && s.set.every((x) => typeof x === 'string')) && !isObj(s.set))
    fail('set', s.set, 'give a list like ["epochs=3", "optimizer.lr=0.005"] or an object like {"epochs": 3}');
  if ((s.model === undefined) === (s.models === undefined))
    fail(s.model === undefined ? 'model' : 'models', s.model ?? s.models, "give either 'model' (one model) or 'models' (a list), not both");
  const models = s.models ?? [s.model!];
  if (s.models !== undefined && (!Array.isArray(s.models) || !s.models.length))
    fail('models', s.models, 'give a non-empty list of model names (see `kshare models`)');
  models.forEach((m, i) => {
    const f = s.models ? `models[${i}]` : 'model';
    if (typeof m === 'string') {
      if (!m) fail(f, m, 'give a model name (see `kshare models`)');
    } else if (!isObj(m) || typeof m.name !== 'string') {
      fail(f, m, 'give a model name, or an inline config with a "name" (as in `kshare models --config` files)');
    } else if (m.seeds !== undefined) {
      seedList(m.seeds, `${f}.seeds`);
    }
  });
  if (s.plans !== undefined) {
    if (!Array.isArray(s.plans) || !s.plans.length)
      fail('plans', s.plans, 'give a non-empty list such as ["none", "depthwise", "pointwise", "both", "consecutive:2"], or leave it out');
    s.plans.forEach((p, i) => {
      if (typeof p === 'string') return;
      if (!isObj(p) || (typeof p.plan !== 'string' && !isObj(p.plan)))
        fail(`plans[${i}]`, p, 'give a plan text ("both", "strided:2") or {"plan": ..., "seeds": [...]}');
      for (const k of Object.keys(p))
        if (!['plan', 'name', 'seeds'].includes(k)) fail(`plans[${i}].${k}`, (p as Record<string, unknown>)[k], 'unknown field (known: plan, name, seeds)');
      if (p.name !== undefined && (typeof p.name !== 'string' || !p.name)) fail(`plans[${i}].name`, p.name, 'give a non-empty label or leave it out');
      if (p.seeds !== undefined) seedList(p.seeds, `plans[${i}].seeds`);
    });
  }
  seedList(s.seeds, 'seeds');
  if (typeof s.dataset !== 'string' || !s.dataset) fail('dataset', s.dataset, 'give cifar10, cifar100 or an image folder <root>/{train,test}/<class>/*');
  if (s.dataDir !== undefined && typeof s.dataDir !== 'string') fail('dataDir', s.dataDir, 'give a folder path or leave it out');
  if (s.device !== undefined && (typeof s.device !== 'string' || !/^(cpu|cuda(:\d+)?)$/.test(s.device))) fail('device', s.device, 'give cpu, cuda or cuda:N');
  if (s.threads !== undefined && !(Number.isInteger(s.threads) && s.threads >= 1)) fail('threads', s.threads, 'give a positive integer or leave it out');
  if (s.channelsLast !== undefined && typeof s.channelsLast !== 'boolean') fail('channelsLast', s.channelsLast, 'give true or false');
  if (typeof s.out !== 'string' || !s.out) fail('out', s.out, 'give the output folder, relative to the spec file (e.g. "../results/my-sweep")');
  return s;
}

/** A file-system-friendly key for a plan or model label. */
export function slug(text: string): string {
  return (
    text
      .trim()
      .replace(/[^A-Za-z0-9_.-]+/g, '-')
      .replace(/^-+|-+$/g, '') || 'x'
  );
}

function overridesOf(set: SweepSpec['set']): [string[], unknown][] {
  if (!set) return [];
  if (Array.isArray(set)) return set.map((x) => parseOverride(x));
  return Object.entries(set).map(([k, v]) => [k.split('.'), v]);
}

/** Number of classes of a dataset spec without loading it (reports count MACs of the real head). */
export function datasetClasses(dataset: string): number {
  if (dataset === 'cifar10') return 10;
  if (dataset === 'cifar100') return 100;
  const train = path.join(dataset, 'train');
  if (!existsSync(train) || !statSync(train).isDirectory())
    throw new SpecError(`sweep spec: 'dataset' is ${JSON.stringify(dataset)}, which is neither cifar10, cifar100 nor a folder with a train/ subfolder`);
  const n = readdirSync(train, { withFileTypes: true }).filter((d) => d.isDirectory()).length;
  if (n < 1) throw new SpecError(`sweep spec: dataset folder ${train} has no class folders`);
  return n;
}

/** The model config for a plan, or an error naming the field and the plans that exist. */
function configWithPlan(base: ModelConfig, baseName: string, plan: string | SharingPlan, field: string, classes: number): ModelConfig {
  const { plan: _drop, ...rest } = base as ModelConfig & { plan?: unknown };
  void _drop;
  if (typeof plan === 'string' && base.architecture === 'convmixer' && (CONVMIXER_SHARING as readonly string[]).includes(plan)) {
    return { ...rest, sharing: plan } as ModelConfig;
  }
  let parsed: SharingPlan | null = null;
  let why = '';
  try {
    parsed = parseSharingPlan(typeof plan === 'string' ? plan : JSON.stringify(plan));
  } catch (e) {
    why = (e as Error).message;
  }
  // Names from `kshare info <model> --plans` ("isomorphic per top-level module", "strided 2") work too.
  let known: string[] = [];
  if (!parsed && typeof plan === 'string') {
    const probe = buildFromConfig(base, classes);
    try {
      const cands = candidatePlans(probe);
      known = cands.map((c) => c.name);
      parsed = cands.find((c) => c.name === plan)?.plan ?? null;
    } finally {
      probe.dispose();
    }
  }
  if (!parsed) {
    const modes = base.architecture === 'convmixer' ? `${CONVMIXER_SHARING.join(', ')}, ` : '';
    throw new SpecError(
      `sweep spec: '${field}' is ${JSON.stringify(plan)}, which is not a sharing plan for ${baseName} (${why}); use one of ${modes}isomorphic, consecutive:K, strided:M, groups:a,b;c,d[/weights], a plan object, or a name from \`kshare info ${baseName} --plans\`${known.length ? ` (${known.map((k) => `"${k}"`).join(', ')})` : ''}`,
    );
  }
  // A ConvMixer built unshared, then the plan: applySharingPlan unshares before it shares anyway.
  return (base.architecture === 'convmixer' ? { ...rest, sharing: 'none', plan: parsed } : { ...rest, plan: parsed }) as ModelConfig;
}

/** Expands a spec into its runs (models x plans x seeds), counting each configuration's parameters and MACs. */
export function planSweep(spec: SweepSpec, specFile: string, opts: { out?: string } = {}): SweepPlan {
  const specDir = path.dirname(path.resolve(specFile));
  const rel = (p: string) => path.resolve(specDir, p);
  const recipeRef = spec.recipe.endsWith('.json') || spec.recipe.includes('/') ? rel(spec.recipe) : spec.recipe;
  let recipe: Recipe;
  try {
    recipe = loadRecipe(recipeRef);
    const ov = overridesOf(spec.set);
    if (ov.length) recipe = applyOverrides(recipe, ov);
  } catch (e) {
    throw new SpecError(`sweep spec ${specFile}: ${(e as Error).message} (check 'recipe' and 'set')`);
  }
  const out = opts.out ? path.resolve(opts.out) : rel(spec.out);
  const dataset = ['cifar10', 'cifar100'].includes(spec.dataset) ? spec.dataset : rel(spec.dataset);
  const classes = datasetClasses(dataset);
  const models = spec.models ?? [spec.model!];
  const runs: SweepRun[] = [];
  const configs = new Map<string, string>();
  models.forEach((m, mi) => {
    const mField = spec.models ? `models[${mi}]` : 'model';
    let baseName: string;
    let base: ModelConfig | null;
    let modelSeeds: number[] | undefined;
    if (typeof m === 'string') {
      baseName = m;
      try {
        base = modelConfig(m);
      } catch (e) {
        throw new SpecError(`sweep spec: '${mField}' is ${JSON.stringify(m)}: ${(e as Error).message}`);
      }
      if (!base)
        throw new SpecError(
          `sweep spec: '${mField}' is ${JSON.stringify(m)}, a model registered in code with a factory; a sweep trains in child processes and needs a config model (give an inline config with "name" and "architecture")`,
        );
    } else {
      baseName = m.name;
      modelSeeds = m.seeds;
      try {
        base = validateConfig(m, `sweep spec '${mField}'`, ['name', 'seeds']);
      } catch (e) {
        throw new SpecError(`${(e as Error).message}`);
      }
    }
    const plans: (PlanItem | null)[] = spec.plans ?? [null];
    plans.forEach((p, pi) => {
      const pField = `plans[${pi}]`;
      const planValue = p === null ? null : typeof p === 'string' ? p : p.plan;
      const planText = planValue === null ? null : typeof planValue === 'string' ? planValue : JSON.stringify(planValue);
      const planLabel = p !== null && typeof p === 'object' && p.name ? p.name : planText;
      const config = planValue === null ? base! : configWithPlan(base!, baseName, planValue, pField, classes);
      const key = models.length > 1 && planLabel ? `${baseName}.${slug(planLabel)}` : planLabel ? slug(planLabel) : slug(baseName);
      const where = planValue === null ? mField : models.length > 1 ? `${mField} with ${pField}` : pField;
      if (configs.has(key))
        throw new SpecError(
          `sweep spec: '${where}' gives configuration '${key}' a second time (first from '${configs.get(key)}'); list each model and plan once, or give plans a distinct "name"`,
        );
      configs.set(key, where);
      const modelName = planValue === null ? baseName : `${slug(baseName)}.${slug(planLabel!)}`;
      let counts: { trainable: number; unshared: number; bytes: number; macs: number };
      try {
        const model = buildFromConfig(config, classes);
        try {
          const s = modelSummary(model, modelName, classes);
          counts = { trainable: s.params, unshared: s.paramsUnshared, bytes: s.weightBytes, macs: s.macs };
        } finally {
          model.dispose();
        }
      } catch (e) {
        throw new SpecError(`sweep spec: '${where}' (${key}): ${(e as Error).message}`);
      }
      const seeds = (p !== null && typeof p === 'object' ? p.seeds : undefined) ?? modelSeeds ?? spec.seeds;
      for (const seed of seeds) {
        const id = `${key}-s${seed}`;
        runs.push({
          id,
          config: key,
          model: baseName,
          plan: planLabel,
          modelName,
          modelConfig: config,
          seed,
          recipe: { ...recipe, model: modelName, seed },
          dir: path.join(out, RUNS_DIR, id),
          classes,
          trainableParams: counts.trainable,
          unsharedParams: counts.unshared,
          weightBytes: counts.bytes,
          macs: counts.macs,
        });
      }
    });
  });
  return {
    spec,
    specFile: path.resolve(specFile),
    out,
    runs,
    dataset,
    dataDir: spec.dataDir ? rel(spec.dataDir) : null,
    device: spec.device ?? 'cpu',
    threads: spec.threads ?? null,
    channelsLast: spec.channelsLast ?? null,
  };
}

export type RunState = { kind: 'new' } | { kind: 'resume'; epochsDone: number } | { kind: 'done'; summary: TrainSummary };

function readJson<T>(file: string): T | null {
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

/** Dotted paths where two JSON values differ. */
function differences(a: unknown, b: unknown, prefix = ''): string[] {
  if (isObj(a) && isObj(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences(a[k], b[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [prefix || '(value)'];
}

/**
 * Where a run stands: finished (skipped), started (resumed from its checkpoint) or new. A run
 * folder made from a different recipe or model is an error: a sweep never mixes two set-ups.
 */
export function runState(run: SweepRun): RunState {
  const recipeFile = path.join(run.dir, RECIPE_FILE);
  const modelFile = path.join(run.dir, MODEL_FILE);
  const stored = readJson<Recipe>(recipeFile);
  if (stored) {
    const diff = differences(stored, run.recipe);
    if (diff.length)
      throw new Error(
        `run folder ${run.dir} was made with a different recipe (${diff.join(', ')} differ): restore the spec, or move that folder away to start the run again`,
      );
  }
  const storedModel = readJson<Record<string, unknown>>(modelFile);
  if (storedModel) {
    const diff = differences(storedModel, { name: run.modelName, ...run.modelConfig });
    if (diff.length)
      throw new Error(`run folder ${run.dir} was made with a different model config (${diff.join(', ')} differ): restore the spec, or move that folder away`);
  }
  const summary = readJson<TrainSummary>(path.join(run.dir, SUMMARY_FILE));
  if (summary && summary.status === 'completed' && summary.epochsDone >= run.recipe.epochs) return { kind: 'done', summary };
  if (existsSync(path.join(run.dir, CHECKPOINT_FILE))) return { kind: 'resume', epochsDone: readLog(run.dir).length };
  return { kind: 'new' };
}

export function runRecord(plan: SweepPlan, r: SweepRun): SweepRunRecord {
  return {
    sweep: plan.spec.name,
    id: r.id,
    config: r.config,
    model: r.model,
    plan: r.plan,
    modelName: r.modelName,
    seed: r.seed,
    classes: r.classes,
    trainableParams: r.trainableParams,
    unsharedParams: r.unsharedParams,
    weightBytes: r.weightBytes,
    macs: r.macs,
  };
}

/** Writes <out>/sweep.json: the spec as given plus the resolved runs (what `kshare report` reads). */
export function writeSweepFile(plan: SweepPlan): void {
  mkdirSync(plan.out, { recursive: true });
  writeJsonAtomic(path.join(plan.out, SWEEP_FILE), {
    spec: plan.spec,
    specFile: plan.specFile,
    dataset: plan.dataset,
    runs: plan.runs.map((r) => ({ ...runRecord(plan, r), dir: path.relative(plan.out, r.dir) })),
  });
}

/** Whether a run trains in channels_last: the spec's channelsLast where given, otherwise its model's default (trainsChannelsLast). */
export function runChannelsLast(plan: Pick<SweepPlan, 'channelsLast' | 'device'>, run: Pick<SweepRun, 'modelName' | 'modelConfig'>): boolean {
  return plan.channelsLast ?? trainsChannelsLast(plan.device, run.modelName, run.modelConfig);
}

/** The command line that trains one run (child process). */
export function trainArgs(plan: SweepPlan, run: SweepRun, resume: boolean, threads: number | null): string[] {
  const args = [
    'train',
    '--recipe',
    path.join(run.dir, RECIPE_FILE),
    '--model',
    run.modelName,
    '--config',
    path.join(run.dir, MODEL_FILE),
    '--dataset',
    plan.dataset,
    '--out',
    run.dir,
    '--device',
    plan.device,
    '--no-progress',
  ];
  if (plan.dataDir) args.push('--data-dir', plan.dataDir);
  if (threads) args.push('--threads', String(threads));
  if (runChannelsLast(plan, run)) args.push('--channels-last');
  if (resume) args.push('--resume');
  return args;
}

function cliPath(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../cli/main.js');
}

export interface SweepOptions {
  /** Runs trained at the same time (each in its own child process and folder). */
  jobs?: number;
  /** libtorch threads per child (default: the spec's, else cores / jobs when jobs > 1). */
  threads?: number;
  log?: (line: string) => void;
  /** Aborted: children get SIGINT (they checkpoint and stop), no new run starts. Aborted twice: children quit at once. */
  stop?: AbortSignal;
  /** Abort again (second Ctrl-C). */
  hardStop?: AbortSignal;
}

export interface SweepResult {
  status: 'completed' | 'interrupted' | 'failed';
  done: string[];
  skipped: string[];
  failed: { id: string; code: number | null; tail: string[] }[];
  interrupted: string[];
  seconds: number;
}

/** Seconds per epoch per MAC, from every epoch logged so far by the sweep's runs (null before the first). */
function secondsPerEpochMac(runs: SweepRun[]): number | null {
  let secs = 0,
    cost = 0;
  for (const r of runs) {
    for (const e of readLog(r.dir)) {
      if (!(e.seconds > 0)) continue;
      secs += e.seconds;
      cost += r.macs;
    }
  }
  return cost > 0 ? secs / cost : null;
}

/** Estimated seconds left for the given runs (epochs not yet logged), or null before any epoch is timed. */
export function estimateLeft(all: SweepRun[], pending: SweepRun[], overheadPerRun = 0): number | null {
  const rate = secondsPerEpochMac(all);
  if (rate === null) return null;
  let s = 0;
  for (const r of pending) s += Math.max(0, r.recipe.epochs - readLog(r.dir).length) * r.macs * rate + overheadPerRun;
  return s;
}

/** Trains every run of the plan that is not finished, `jobs` at a time. */
export async function runSweep(plan: SweepPlan, o: SweepOptions = {}): Promise<SweepResult> {
  const log = o.log ?? ((l: string) => console.log(l));
  const jobs = o.jobs ?? 1;
  const threads = o.threads ?? plan.threads ?? (jobs > 1 ? Math.max(1, Math.floor(availableParallelism() / jobs)) : null);
  const start = performance.now();
  const n = plan.runs.length;
  const result: SweepResult = { status: 'completed', done: [], skipped: [], failed: [], interrupted: [], seconds: 0 };
  writeSweepFile(plan);
  const queue: { run: SweepRun; index: number; resume: boolean }[] = [];
  plan.runs.forEach((run, i) => {
    const st = runState(run);
    if (st.kind === 'done') {
      result.skipped.push(run.id);
      log(`[${i + 1}/${n}] ${run.id}: already finished (best ${pct(st.summary.bestAcc)}, final ${pct(st.summary.finalAcc)}), skipped`);
    } else {
      queue.push({ run, index: i, resume: st.kind === 'resume' });
    }
  });
  if (!queue.length) {
    log(`all ${n} runs of ${plan.spec.name} are finished; \`kshare report ${path.relative(process.cwd(), plan.out) || '.'}\` summarises them`);
    result.seconds = (performance.now() - start) / 1000;
    return result;
  }
  const pending = new Set(queue.map((q) => q.run));
  const children = new Set<ChildProcess>();
  let overheadSum = 0,
    overheadCount = 0;
  const leftText = () => {
    const s = estimateLeft(plan.runs, [...pending], overheadCount ? overheadSum / overheadCount : 0);
    const runsLeft = `${pending.size} run${pending.size === 1 ? '' : 's'} left`;
    return s === null
      ? `${runsLeft} (time left known after the first epoch)`
      : `${runsLeft}, about ${formatDuration(jobs > 1 ? s / Math.min(jobs, pending.size || 1) : s)} left`;
  };
  const onStop = () => {
    for (const c of children) signalChild(c, 'SIGINT');
  };
  o.stop?.addEventListener('abort', onStop);
  o.hardStop?.addEventListener('abort', onStop);
  log(
    `sweep ${plan.spec.name}: ${n} runs (${result.skipped.length} finished, ${queue.filter((q) => q.resume).length} to resume, ${queue.filter((q) => !q.resume).length} new), ` +
      `${jobs} at a time${threads ? `, ${threads} thread(s) each` : ''}; run folders under ${path.join(plan.out, RUNS_DIR)}`,
  );

  const runOne = async (q: { run: SweepRun; index: number; resume: boolean }) => {
    const { run } = q;
    const tag = `[${q.index + 1}/${n}] ${run.id}`;
    mkdirSync(run.dir, { recursive: true });
    writeJsonAtomic(path.join(run.dir, RECIPE_FILE), run.recipe);
    writeJsonAtomic(path.join(run.dir, MODEL_FILE), { name: run.modelName, ...run.modelConfig });
    writeJsonAtomic(path.join(run.dir, SWEEP_RUN_FILE), runRecord(plan, run));
    const before = readLog(run.dir).length;
    log(
      `${tag}: ${q.resume ? `resuming after epoch ${before}/${run.recipe.epochs}` : 'starting'} (${run.trainableParams.toLocaleString('en-US')} trainable parameters, seed ${run.seed}); ${leftText()}`,
    );
    const t0 = performance.now();
    const outFile = path.join(run.dir, OUTPUT_FILE);
    appendFileSync(outFile, `\n# ${new Date().toISOString()} kshare ${trainArgs(plan, run, q.resume, threads).join(' ')}\n`);
    // Own process group: a terminal Ctrl-C reaches the sweep only, which forwards exactly one SIGINT.
    const child = spawn(process.execPath, [cliPath(), ...trainArgs(plan, run, q.resume, threads)], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    const tail: string[] = [];
    const onLine = (line: string) => {
      appendFileSync(outFile, line + '\n');
      tail.push(line);
      if (tail.length > 8) tail.shift();
      if (line.trim()) log(`  ${tag}: ${line}`);
    };
    createInterface({ input: child.stdout! }).on('line', onLine);
    createInterface({ input: child.stderr! }).on('line', onLine);
    const code = await new Promise<number | null>((resolve) => {
      child.on('error', (e) => {
        onLine(`could not start: ${e.message}`);
        resolve(-1);
      });
      child.on('close', (c) => resolve(c));
    });
    children.delete(child);
    const secs = (performance.now() - t0) / 1000;
    const epochSecs = readLog(run.dir)
      .slice(before)
      .reduce((s, e) => s + e.seconds, 0);
    const st = runState(run);
    if (st.kind === 'done') {
      overheadSum += Math.max(0, secs - epochSecs);
      overheadCount++;
      pending.delete(run);
      result.done.push(run.id);
      log(`${tag}: done in ${formatDuration(secs)}: best test accuracy ${pct(st.summary.bestAcc)}, final ${pct(st.summary.finalAcc)}; ${leftText()}`);
    } else if (o.stop?.aborted) {
      result.interrupted.push(run.id);
      log(
        `${tag}: interrupted after ${formatDuration(secs)}${st.kind === 'resume' ? ' (checkpoint kept; the next `kshare sweep` resumes it)' : ' before its first checkpoint (it restarts next time)'}`,
      );
    } else {
      pending.delete(run);
      result.failed.push({ id: run.id, code, tail });
      log(
        `${tag}: FAILED (exit code ${code}) after ${formatDuration(secs)}; its output is in ${outFile}${st.kind === 'resume' ? ' (its last checkpoint is kept: the next sweep resumes it)' : ''}; ${leftText()}`,
      );
    }
  };

  try {
    let next = 0;
    const worker = async () => {
      while (next < queue.length && !o.stop?.aborted) await runOne(queue[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, worker));
  } finally {
    // Only reached with children alive when the sweep itself failed: do not leave them running.
    for (const c of children) signalChild(c, 'SIGTERM');
    o.stop?.removeEventListener('abort', onStop);
    o.hardStop?.removeEventListener('abort', onStop);
  }
  result.seconds = (performance.now() - start) / 1000;
  result.status = o.stop?.aborted ? 'interrupted' : result.failed.length ? 'failed' : 'completed';
  const rel = path.relative(process.cwd(), plan.specFile) || plan.specFile;
  if (result.status === 'interrupted')
    log(
      `sweep interrupted after ${formatDuration(result.seconds)}: ${result.done.length} run(s) finished this time; \`kshare sweep ${rel}\` continues where it stopped`,
    );
  else
    log(
      `sweep ${plan.spec.name} ${result.status === 'completed' ? 'finished' : 'finished with failures'} in ${formatDuration(result.seconds)}: ${result.done.length} trained, ${result.skipped.length} already done${result.failed.length ? `, ${result.failed.length} failed (${result.failed.map((f) => f.id).join(', ')})` : ''}; \`kshare report ${path.relative(process.cwd(), plan.out) || '.'}\` summarises them`,
    );
  return result;
}

function signalChild(c: ChildProcess, sig: NodeJS.Signals): void {
  try {
    c.kill(sig);
  } catch {
    /* already gone */
  }
}

function pct(x: number | null | undefined): string {
  return typeof x === 'number' ? `${(100 * x).toFixed(2)}%` : '?';
}
