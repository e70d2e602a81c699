// What a deployed model needs to know besides its graph: class names, input size and the
// normalisation its training used. Stored in the ONNX file's metadata_props (kshare.* keys),
// so one .onnx file is enough for `kshare predict` and the web page.
import type { ModelProto } from './onnx-schema.js';
import type { InputSpec } from '../models/spec.js';
import { modelInputSpec } from '../models/registry.js';

export type { InputSpec } from '../models/spec.js';

export interface ModelInfo {
  /** Registry name, e.g. 'convmixer_256_16_shared'. */
  model: string;
  classes: string[];
  /** Distinct trainable scalars (a shared kernel counts once). */
  params: number;
  input: InputSpec;
  /** Where the weights come from, for people (e.g. 'fresh weights, seed 0' or a checkpoint's epoch and accuracy). */
  source?: string;
}

/** The input a model's architecture trains with (its spec's), by model name. */
export function defaultInputSpec(modelName: string, config: unknown = null): InputSpec {
  return modelInputSpec(modelName, config);
}

/** Largest input side a model's metadata may claim: the page and `predict` allocate per pixel. */
export const MAX_INPUT_SIDE = 4096;
/** Largest class count read from a file (names are allocated per class). */
export const MAX_CLASSES = 100_000;

/**
 * Checks an input spec read from a file (ONNX metadata, a weights file): channels 1 to 4, a
 * height and width of 1 to MAX_INPUT_SIDE, one finite mean and one finite positive std per
 * channel. `where` names the file and key in the error.
 */
export function validateInputSpec(raw: unknown, where: string): InputSpec {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw))
    throw new Error(`${where} must be an object {channels, height, width, mean, std}, got ${JSON.stringify(raw)?.slice(0, 80)}`);
  const s = raw as Partial<InputSpec>;
  const side = (k: 'height' | 'width') => {
    const v = s[k];
    if (!(Number.isInteger(v) && (v as number) >= 1 && (v as number) <= MAX_INPUT_SIDE))
      throw new Error(`${where}: '${k}' must be an integer from 1 to ${MAX_INPUT_SIDE}, got ${JSON.stringify(v)}`);
  };
  if (!(Number.isInteger(s.channels) && s.channels! >= 1 && s.channels! <= 4))
    throw new Error(`${where}: 'channels' must be an integer from 1 to 4, got ${JSON.stringify(s.channels)}`);
  side('height');
  side('width');
  for (const k of ['mean', 'std'] as const) {
    const v = s[k];
    if (!Array.isArray(v) || v.length !== s.channels || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (k === 'mean' || x > 0))) {
      throw new Error(
        `${where}: '${k}' must be ${s.channels} finite ${k === 'std' ? 'positive ' : ''}numbers (one per channel), got ${JSON.stringify(v)?.slice(0, 80)}`,
      );
    }
  }
  return { channels: s.channels!, height: s.height!, width: s.width!, mean: [...s.mean!], std: [...s.std!] };
}

export const META_KEYS = { model: 'kshare.model', classes: 'kshare.classes', params: 'kshare.params', input: 'kshare.input', source: 'kshare.source' } as const;

export function infoToMetadata(info: ModelInfo): Record<string, string> {
  return {
    [META_KEYS.model]: info.model,
    [META_KEYS.classes]: JSON.stringify(info.classes),
    [META_KEYS.params]: String(info.params),
    [META_KEYS.input]: JSON.stringify(info.input),
    ...(info.source ? { [META_KEYS.source]: info.source } : {}),
  };
}

/** Reads kshare's metadata back; a model from another tool gets the defaults it can be given. */
export function infoFromModel(m: ModelProto, label: string): ModelInfo {
  const props = new Map((m.metadataProps ?? []).map((p) => [p.key, p.value]));
  const parse = <T>(key: string): T | undefined => {
    const v = props.get(key);
    if (v === undefined) return undefined;
    try {
      return JSON.parse(v) as T;
    } catch {
      throw new Error(`${label}: metadata '${key}' is not valid JSON`);
    }
  };
  const model = props.get(META_KEYS.model) ?? m.graph.name ?? 'unknown';
  const outDim = m.graph.output[0]?.type?.tensorType?.shape?.dim?.[1]?.dimValue;
  if (outDim !== undefined && Number(outDim) > MAX_CLASSES) throw new Error(`${label}: the graph's output claims ${outDim} classes, more than ${MAX_CLASSES}`);
  const classes = parse<string[]>(META_KEYS.classes) ?? Array.from({ length: Number(outDim ?? 0) }, (_, i) => `class ${i}`);
  const rawInput = parse<unknown>(META_KEYS.input);
  const input = rawInput === undefined ? defaultInputSpec(model) : validateInputSpec(rawInput, `${label}: metadata '${META_KEYS.input}'`);
  // The graph's own input shape, when static, must agree with what the metadata claims.
  const dims = m.graph.input[0]?.type?.tensorType?.shape?.dim ?? [];
  const claimed = [input.channels, input.height, input.width];
  for (let i = 1; i < Math.min(dims.length, 4); i++) {
    const d = dims[i]?.dimValue;
    if (d !== undefined && d !== null && Number(d) > 0 && Number(d) !== claimed[i - 1]) {
      throw new Error(
        `${label}: metadata '${META_KEYS.input}' claims input ${claimed.join('x')}, the graph's input is ${dims
          .slice(1)
          .map((x) => x?.dimValue ?? '?')
          .join('x')}`,
      );
    }
  }
  if (!Array.isArray(classes) || classes.length === 0 || !classes.every((c) => typeof c === 'string')) {
    throw new Error(`${label}: metadata '${META_KEYS.classes}' must be a non-empty list of class names`);
  }
  const params = Number(props.get(META_KEYS.params) ?? NaN);
  const source = props.get(META_KEYS.source);
  return { model, classes, params, input, ...(source ? { source } : {}) };
}
