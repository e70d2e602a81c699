// Model configurations: what a registry entry, a user's JSON config file or a checkpoint
// describes. Every architecture-specific fact comes from its spec (./spec.ts).
import type { Module } from '../nn/index.js';
import { applySharingPlan, PLAN_KINDS, type SharingPlan } from '../nn/index.js';
import { BUILTIN_ARCHITECTURES } from './architectures.js';
import type { ArchitectureSpec, CpuMemoryFormat, InputSpec } from './spec.js';

/** A config as written: the architecture, its fields (defaults may be left out), and two common fields. */
export interface ModelConfig {
  architecture: string;
  /** A sharing plan applied after building (src/nn/sharing.ts). */
  plan?: SharingPlan;
  /** Replaces the generated one-line description. */
  description?: string;
  [field: string]: unknown;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- specs differ in their config type
type AnySpec = ArchitectureSpec<any>;

const specs = new Map<string, AnySpec>();

/** Adds an architecture (e.g. a user's own spec) so configs, names and CLI commands know it. */
export function registerArchitecture<C extends object>(spec: ArchitectureSpec<C>): void {
  if (!spec || typeof spec.architecture !== 'string' || !/^[a-z][a-z0-9_]*$/.test(spec.architecture)) {
    throw new Error(`registerArchitecture: bad architecture name ${JSON.stringify(spec?.architecture)} (lower case letters, digits, _)`);
  }
  for (const k of Object.keys(spec.fields)) {
    if (COMMON_FIELDS.includes(k) || k === 'architecture')
      throw new Error(`registerArchitecture(${spec.architecture}): field '${k}' is reserved for every config`);
  }
  specs.set(spec.architecture, spec);
}

/** Known architectures, built-ins first. */
export function architectures(): AnySpec[] {
  return [...specs.values()];
}

/** Names of the known architectures. */
export const ARCHITECTURES: readonly string[] = BUILTIN_ARCHITECTURES.map((s) => s.architecture);

export function architectureSpec(name: string): AnySpec {
  const s = specs.get(name);
  if (!s) throw new Error(`unknown architecture ${JSON.stringify(name)} (known: ${[...specs.keys()].join(', ')})`);
  return s;
}

const COMMON_FIELDS = ['plan', 'description'];
const planOk = (v: unknown) => !!v && typeof v === 'object' && (PLAN_KINDS as readonly string[]).includes((v as { kind?: string }).kind ?? '');

/**
 * Checks a config object field by field against its architecture's spec (types and bounds);
 * `where` names its origin in the error. Returns the config as given (without `extraKeys`).
 */
export function validateConfig(raw: unknown, where: string, extraKeys: string[] = []): ModelConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: a model config must be an object`);
  const c = raw as Record<string, unknown>;
  const arch = c.architecture;
  const spec = typeof arch === 'string' ? specs.get(arch) : undefined;
  if (!spec) throw new Error(`${where}: 'architecture' must be one of ${[...specs.keys()].join(', ')}, got ${JSON.stringify(arch)}`);
  const fields = spec.fields as Record<string, { expect: string; check(v: unknown): boolean; default?: unknown }>;
  for (const [k, v] of Object.entries(c)) {
    if (k === 'architecture' || extraKeys.includes(k)) continue;
    if (k === 'plan') {
      if (!planOk(v)) throw new Error(`${where}: 'plan' must be a sharing plan object with kind one of ${PLAN_KINDS.join(', ')}, got ${JSON.stringify(v)}`);
      continue;
    }
    if (k === 'description') {
      if (typeof v !== 'string') throw new Error(`${where}: 'description' must be a string, got ${JSON.stringify(v)}`);
      continue;
    }
    const f = fields[k];
    if (!f) throw new Error(`${where}: unknown field '${k}' for architecture ${arch} (known: ${[...Object.keys(fields), ...COMMON_FIELDS].join(', ')})`);
    if (!f.check(v)) throw new Error(`${where}: '${k}' must be ${f.expect}, got ${JSON.stringify(v)}`);
  }
  for (const [k, f] of Object.entries(fields)) if (f.default === undefined && c[k] === undefined) throw new Error(`${where}: missing required field '${k}'`);
  const problem = spec.crossCheck?.(resolveFields(spec, c));
  if (problem) throw new Error(`${where}: ${problem}`);
  const out = { ...c } as Record<string, unknown>;
  for (const k of extraKeys) delete out[k];
  return out as ModelConfig;
}

/** The spec's fields with defaults filled in (deep copies of array defaults). */
function resolveFields(spec: AnySpec, c: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, f] of Object.entries(spec.fields as Record<string, { default?: unknown }>)) {
    const v = c[k] ?? f.default;
    out[k] = Array.isArray(v) ? [...v] : v;
  }
  return out;
}

/** A config with its architecture's defaults filled in (what `build`, `describe` and `input` see). */
export function resolveConfig(c: ModelConfig): ModelConfig {
  const spec = architectureSpec(c.architecture);
  const out: ModelConfig = { architecture: c.architecture, ...resolveFields(spec, c) };
  if (c.plan) out.plan = c.plan;
  if (c.description) out.description = c.description;
  return out;
}

/** Builds the model a config describes (validated first: stored configs may come from anywhere). */
export function buildFromConfig(c: ModelConfig, classes: number): Module {
  if (!Number.isInteger(classes) || classes < 1) throw new RangeError(`classes must be a positive integer, got ${classes}`);
  validateConfig(c, `model config (${JSON.stringify(c.architecture)})`);
  const spec = architectureSpec(c.architecture);
  const m = spec.build(resolveFields(spec, c), classes);
  if (c.plan) {
    try {
      applySharingPlan(m, c.plan);
    } catch (e) {
      m.dispose();
      throw e;
    }
  }
  return m;
}

/** One line saying what a config builds. */
export function describeConfig(c: ModelConfig): string {
  if (c.description) return c.description;
  const spec = architectureSpec(c.architecture);
  return `${spec.describe(resolveFields(spec, c))}${c.plan ? `, plan ${c.plan.kind}` : ''}`;
}

/** The input size and normalisation a config's architecture trains with. */
export function inputSpecOf(c: ModelConfig): InputSpec {
  const spec = architectureSpec(c.architecture);
  return spec.input(resolveFields(spec, c));
}

/** The memory format CPU inference runs a config's architecture in (its spec's choice). */
export function cpuMemoryFormatOf(c: ModelConfig): CpuMemoryFormat {
  return architectureSpec(c.architecture).cpuMemoryFormat ?? 'channels_last';
}

/** The default recipe name of a config's architecture. */
export function recipeOf(c: ModelConfig): string {
  return architectureSpec(c.architecture).recipe;
}

for (const s of BUILTIN_ARCHITECTURES) registerArchitecture(s);
