// A model config read from a file (a checkpoint's metadata, a weights file's model name) is data,
// not an order: before anything is built it must stay within sane bounds and describe exactly
// the tensors the file holds. The file's tensor shapes decide the sizes, so a small file cannot
// make kshare build a model of gigabytes first and only then say "does not fit".
import type { SafetensorsHeader } from './safetensors.js';
import { parseAliases } from './weights.js';
import { architectureSpec, describeConfig, resolveConfig, validateConfig, type ModelConfig } from './config.js';

/** Largest class count a stored model may have (every other field is bounded by its architecture's spec). */
export const STORED_CONFIG_BOUNDS = { classes: 100_000 } as const;

/** Every state name of a file (aliases expanded, `prefix` removed) to its shape, from the header alone. */
export function stateShapes(file: string, header: SafetensorsHeader, prefix = ''): Map<string, readonly number[]> {
  const shapes = new Map<string, readonly number[]>();
  for (const [k, e] of header.entries) if (k.startsWith(prefix)) shapes.set(k.slice(prefix.length), e.shape);
  for (const [canonical, names] of Object.entries(parseAliases(file, header.metadata))) {
    const s = header.entries.get(canonical)?.shape;
    if (!s || !canonical.startsWith(prefix)) continue; // reported when the tensors are loaded
    for (const n of names) if (n.startsWith(prefix)) shapes.set(n.slice(prefix.length), s);
  }
  return shapes;
}

/**
 * Throws (naming `where`, the field or tensor, and both values) unless `config` is valid for its
 * architecture (fields within the spec's bounds), `classes` is within STORED_CONFIG_BOUNDS, and
 * the tensors its spec names (stem, stage ends, head) have the shapes the file's tensors have.
 */
export function checkStoredConfig(config: ModelConfig, classes: number, shapes: ReadonlyMap<string, readonly number[]>, where: string): void {
  if (classes > STORED_CONFIG_BOUNDS.classes) {
    throw new Error(
      `${where}: classes ${classes} is above the ${STORED_CONFIG_BOUNDS.classes} a stored model may have (the file is damaged or not from kshare)`,
    );
  }
  validateConfig(config, where);
  const resolved = resolveConfig(config);
  const check = architectureSpec(config.architecture).storedTensors?.(resolved, classes);
  if (!check) return; // an architecture without the hook is bounded by its fields only
  const what = describeConfig(resolved);
  for (const [name, shape] of check.expect) {
    const got = shapes.get(name);
    if (!got) throw new Error(`${where}: the config (${what}) needs tensor '${name}', which the file does not hold`);
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      throw new Error(`${where}: the config (${what}, ${classes} classes) needs '${name}' of shape [${shape}], the file holds [${got}]`);
    }
  }
  for (const name of check.absent) if (shapes.has(name)) throw new Error(`${where}: the file holds more blocks than the config (${what}) has ('${name}')`);
}
