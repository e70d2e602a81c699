// Model configurations: what a registry entry or a user's JSON config file describes.
import type { Module } from '../nn/index.js';
import { applySharingPlan, PLAN_KINDS, type SharingPlan } from '../nn/index.js';
import { ConvMixer, CONVMIXER_SHARING, type ConvMixerSharing } from './convmixer.js';
import { SEResNet, type SEResNetConfig } from './se-resnet.js';

export interface ConvMixerModelConfig {
  architecture: 'convmixer';
  dim: number;
  depth: number;
  kernelSize?: number;
  patchSize?: number;
  dilation?: number;
  /** The paper's sharing modes; `plan` (applied afterwards) can express finer ones. */
  sharing?: ConvMixerSharing;
  plan?: SharingPlan;
  description?: string;
}

/** The SE-ResNet's own constructor options (classes come from the caller), plus registry fields. */
export interface SEResNetModelConfig extends Omit<SEResNetConfig, 'classes'> {
  architecture: 'se_resnet';
  plan?: SharingPlan;
  description?: string;
}

export type ModelConfig = ConvMixerModelConfig | SEResNetModelConfig;
export const ARCHITECTURES = ['convmixer', 'se_resnet'] as const;

type FieldCheck = (v: unknown) => boolean;
const posInt: FieldCheck = (v) => Number.isInteger(v) && (v as number) >= 1;
const bool: FieldCheck = (v) => typeof v === 'boolean';
const str: FieldCheck = (v) => typeof v === 'string';
const plan: FieldCheck = (v) => !!v && typeof v === 'object' && (PLAN_KINDS as readonly string[]).includes((v as { kind?: string }).kind ?? '');

const FIELDS: Record<ModelConfig['architecture'], Record<string, [FieldCheck, string, boolean]>> = {
  convmixer: {
    dim: [posInt, 'a positive integer', true], depth: [posInt, 'a positive integer', true],
    kernelSize: [posInt, 'a positive integer', false], patchSize: [posInt, 'a positive integer', false],
    dilation: [posInt, 'a positive integer', false],
    sharing: [(v) => (CONVMIXER_SHARING as readonly unknown[]).includes(v), `one of ${CONVMIXER_SHARING.join(', ')}`, false],
    plan: [plan, `a sharing plan object with kind one of ${PLAN_KINDS.join(', ')}`, false], description: [str, 'a string', false],
  },
  se_resnet: {
    depth: [posInt, 'a positive integer', true],
    share: [(v) => Array.isArray(v) && v.length === 3 && v.every(bool), 'three booleans (one per stage)', false],
    sync: [bool, 'a boolean', false], preact: [bool, 'a boolean', false],
    dropout: [(v) => typeof v === 'number' && v >= 0 && v < 1, 'a number in [0, 1)', false],
    reduction: [posInt, 'a positive integer', false],
    widths: [(v) => Array.isArray(v) && v.length === 3 && v.every(posInt), 'three positive integers', false],
    plan: [plan, `a sharing plan object with kind one of ${PLAN_KINDS.join(', ')}`, false], description: [str, 'a string', false],
  },
};

/** Checks a config object field by field; `where` names its origin in the error. */
export function validateConfig(raw: unknown, where: string, extraKeys: string[] = []): ModelConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: a model config must be an object`);
  const c = raw as Record<string, unknown>;
  const arch = c.architecture;
  if (typeof arch !== 'string' || !(arch in FIELDS)) {
    throw new Error(`${where}: 'architecture' must be one of ${ARCHITECTURES.join(', ')}, got ${JSON.stringify(arch)}`);
  }
  const fields = FIELDS[arch as ModelConfig['architecture']];
  for (const [k, v] of Object.entries(c)) {
    if (k === 'architecture' || extraKeys.includes(k)) continue;
    const f = fields[k];
    if (!f) throw new Error(`${where}: unknown field '${k}' for architecture ${arch} (known: ${Object.keys(fields).join(', ')})`);
    if (!f[0](v)) throw new Error(`${where}: '${k}' must be ${f[1]}, got ${JSON.stringify(v)}`);
  }
  for (const [k, f] of Object.entries(fields)) if (f[2] && c[k] === undefined) throw new Error(`${where}: missing required field '${k}'`);
  const out = { ...c } as Record<string, unknown>;
  for (const k of extraKeys) delete out[k];
  return out as unknown as ModelConfig;
}

/** Builds the model a config describes. */
export function buildFromConfig(c: ModelConfig, classes: number): Module {
  if (!Number.isInteger(classes) || classes < 1) throw new RangeError(`classes must be a positive integer, got ${classes}`);
  let m: Module;
  if (c.architecture === 'convmixer') {
    m = new ConvMixer({ dim: c.dim, depth: c.depth, kernelSize: c.kernelSize ?? 9, patchSize: c.patchSize ?? 1, dilation: c.dilation, sharing: c.sharing ?? 'none', classes });
  } else {
    m = new SEResNet({ depth: c.depth, classes, share: c.share, sync: c.sync, preact: c.preact, dropout: c.dropout, reduction: c.reduction, widths: c.widths });
  }
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
  const planText = c.plan ? `, plan ${c.plan.kind}` : '';
  if (c.architecture === 'convmixer') {
    const sh = c.sharing ?? 'none';
    return `ConvMixer-${c.dim}/${c.depth}, kernel ${c.kernelSize ?? 9}, patch ${c.patchSize ?? 1}, ${sh === 'none' ? 'no sharing' : sh === 'both' ? 'depthwise+pointwise shared' : `${sh} shared`}${planText}`;
  }
  const stages = (c.share ?? [true, true, true]).map((s, i) => (s ? String(i + 1) : '')).join('');
  const shared = c.sync === false || stages === '' ? 'no sharing' : stages === '123' ? 'all stages shared' : `stages ${stages.split('').join('+')} shared`;
  return `SE-ResNet d=${c.depth}, ${shared}${c.preact ? ', pre-activation' : ''}${c.dropout ? `, dropout ${c.dropout}` : ''}${planText}`;
}
