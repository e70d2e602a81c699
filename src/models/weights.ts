// Model weights as safetensors: each distinct tensor stored once under its first state-dict
// name; the other names of shared tensors are listed in the metadata under ALIASES_KEY.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { saveSafetensors, loadSafetensors, SafetensorsError } from './safetensors.js';

/** Metadata key holding JSON {canonicalName: [aliasName, ...]}. */
export const ALIASES_KEY = 'kshare.aliases';

/** The model's state with each tensor once, plus the alias names of shared ones. */
export function uniqueState(model: Module): { tensors: Map<string, Tensor>; aliases: Record<string, string[]> } {
  const first = new Map<Tensor, string>();
  const tensors = new Map<string, Tensor>();
  const aliases: Record<string, string[]> = {};
  for (const [name, v] of model.stateDict()) {
    const canonical = first.get(v);
    if (canonical === undefined) {
      first.set(v, name);
      tensors.set(name, v);
    } else {
      (aliases[canonical] ??= []).push(name);
    }
  }
  return { tensors, aliases };
}

/** Writes the model's parameters and buffers (atomically), shared tensors once. */
export function saveWeights(model: Module, file: string, metadata: Record<string, string> = {}): void {
  if (ALIASES_KEY in metadata) throw new Error(`saveWeights: metadata key '${ALIASES_KEY}' is reserved`);
  const { tensors, aliases } = uniqueState(model);
  saveSafetensors(file, tensors, { format: 'pt', ...metadata, [ALIASES_KEY]: JSON.stringify(aliases) });
}

/** The alias table of a weights file's metadata (empty when absent), validated. */
export function parseAliases(file: string, metadata: Record<string, string>): Record<string, string[]> {
  const raw = metadata[ALIASES_KEY];
  if (raw === undefined) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new SafetensorsError(`${file}: metadata '${ALIASES_KEY}' is not valid JSON`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new SafetensorsError(`${file}: metadata '${ALIASES_KEY}' must be an object`);
  for (const [k, v] of Object.entries(parsed)) {
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new SafetensorsError(`${file}: aliases of '${k}' must be a list of names`);
  }
  return parsed as Record<string, string[]>;
}

/** Every state name of a loaded file to its tensor, aliases expanded (shared tensors are the same object). */
export function expandAliases(file: string, tensors: Map<string, Tensor>, aliases: Record<string, string[]>): Map<string, Tensor> {
  const out = new Map(tensors);
  for (const [canonical, names] of Object.entries(aliases)) {
    const v = tensors.get(canonical);
    if (!v) throw new SafetensorsError(`${file}: aliases refer to '${canonical}', which the file does not hold`);
    for (const n of names) {
      if (out.has(n)) throw new SafetensorsError(`${file}: '${n}' is both stored and listed as an alias`);
      out.set(n, v);
    }
  }
  return out;
}

/**
 * Loads a weights file into the model in place (shared kernels stay shared). Raises an error
 * naming the file and the keys when names or shapes do not fit. Returns the file's metadata.
 */
export function loadWeights(model: Module, file: string, opts: { strict?: boolean } = {}): Record<string, string> {
  const { tensors, metadata } = loadSafetensors(file);
  try {
    const state = expandAliases(file, tensors, parseAliases(file, metadata));
    try {
      model.loadStateDict(state, opts);
    } catch (e) {
      throw new Error(`${file} does not fit this model: ${(e as Error).message}`);
    }
    return metadata;
  } finally {
    t.dispose([...tensors.values()]);
  }
}
