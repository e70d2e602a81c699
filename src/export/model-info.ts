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
  const classes = parse<string[]>(META_KEYS.classes) ?? Array.from({ length: outDim ?? 0 }, (_, i) => `class ${i}`);
  const input = parse<InputSpec>(META_KEYS.input) ?? defaultInputSpec(model);
  const params = Number(props.get(META_KEYS.params) ?? NaN);
  const source = props.get(META_KEYS.source);
  return { model, classes, params, input, ...(source ? { source } : {}) };
}
