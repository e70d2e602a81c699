// A model config read from a file (a checkpoint's metadata, a weights file's model name) is data,
// not an order: before anything is built it must stay within sane bounds and describe exactly
// the tensors the file holds. The file's tensor shapes decide the sizes, so a small file cannot
// make kshare build a model of gigabytes first and only then say "does not fit".
import type { SafetensorsHeader } from './safetensors.js';
import { parseAliases } from './weights.js';
import type { ModelConfig } from './config.js';

/** Largest values a stored config may hold (far above the paper's models: dim 256, depth 16, d = 10). */
export const STORED_CONFIG_BOUNDS = {
  classes: 100_000, dim: 8192, depth: 1024, kernelSize: 63, patchSize: 64, dilation: 32, width: 8192, reduction: 8192,
} as const;

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
 * Throws (naming `where`, the field or tensor, and both values) unless `config` with `classes`
 * outputs stays within STORED_CONFIG_BOUNDS and its stem, first block, last block and head have
 * the shapes the file's tensors have.
 */
export function checkStoredConfig(config: ModelConfig, classes: number, shapes: ReadonlyMap<string, readonly number[]>, where: string): void {
  const B = STORED_CONFIG_BOUNDS;
  const bound = (field: string, v: number | undefined, max: number) => {
    if (v !== undefined && v > max) throw new Error(`${where}: ${field} ${v} is above the ${max} a stored model may have (the file is damaged or not from kshare)`);
  };
  bound('classes', classes, B.classes);
  const expect: [string, number[]][] = [];
  let last: string;
  let pastLast: string;
  if (config.architecture === 'convmixer') {
    const { dim, depth } = config;
    const k = config.kernelSize ?? 9, p = config.patchSize ?? 1;
    bound('dim', dim, B.dim); bound('depth', depth, B.depth); bound('kernelSize', k, B.kernelSize);
    bound('patchSize', p, B.patchSize); bound('dilation', config.dilation, B.dilation);
    expect.push(['0.weight', [dim, 3, p, p]], ['3.0.fn.0.weight', [dim, 1, k, k]], ['3.1.weight', [dim, dim, 1, 1]], [`${depth + 5}.weight`, [classes, dim]]);
    last = `${depth + 2}.3.running_mean`;
    pastLast = `${depth + 3}.3.running_mean`;
    expect.push([last, [dim]]);
  } else {
    const { depth } = config;
    const w = config.widths ?? [64, 128, 256];
    bound('depth', depth, B.depth); bound('reduction', config.reduction, B.reduction);
    w.forEach((x, i) => bound(`widths[${i}]`, x, B.width));
    expect.push(['conv1.weight', [16, 3, 3, 3]], ['fc.weight', [classes, w[2]]]);
    for (let s = 0; s < 3; s++) expect.push([`layer${s + 1}.0.conv2.weight`, [w[s]!, w[s]!, 3, 3]]);
    last = `layer3.${depth - 1}.bn2.running_mean`;
    pastLast = `layer3.${depth}.bn2.running_mean`;
    expect.push([last, [w[2]]]);
  }
  for (const [name, shape] of expect) {
    const got = shapes.get(name);
    if (!got) throw new Error(`${where}: the config (${describe(config)}) needs tensor '${name}', which the file does not hold`);
    if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
      throw new Error(`${where}: the config (${describe(config)}, ${classes} classes) needs '${name}' of shape [${shape}], the file holds [${got}]`);
    }
  }
  if (shapes.has(pastLast)) throw new Error(`${where}: the file holds more blocks than the config's depth ${config.depth} ('${pastLast}')`);
}

function describe(c: ModelConfig): string {
  return c.architecture === 'convmixer' ? `convmixer dim ${c.dim}, depth ${c.depth}` : `se_resnet depth ${c.depth}${c.widths ? `, widths ${c.widths}` : ''}`;
}
