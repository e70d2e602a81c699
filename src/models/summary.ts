// Model inspection: per-layer table, unique/unshared parameter counts, weight bytes, MACs and
// share groups, measured by tracing one forward pass of a single image.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module, Conv2d, Linear, analyzeSharing, shareGroups, type ShareGroup, type PlanCost } from '../nn/index.js';

export interface LayerRow {
  name: string;
  type: string;
  config: string;
  outputShape: number[] | null;
  /** Trainable scalars this layer adds (a shared tensor is counted at its first user). */
  params: number;
  /** Canonical name of the shared kernel this layer uses, if any. */
  sharedKernel: string | null;
  /** Multiply-accumulates per image (convolutions and linear layers). */
  macs: number;
  depth: number;
}

export interface ModelSummary {
  model: string;
  classes: number;
  inputShape: number[];
  /** Unique trainable parameters (a shared kernel counts once). */
  params: number;
  /** Trainable parameters if no kernel were shared. */
  paramsUnshared: number;
  /** float32 bytes of the unique trainable parameters. */
  weightBytes: number;
  /** float32 bytes of the parameters without sharing. */
  weightBytesUnshared: number;
  /** float32 bytes of non-trainable state (BN running statistics). */
  bufferBytes: number;
  /** Multiply-accumulates per image of inputShape (default 3x32x32). */
  macs: number;
  shareGroups: ShareGroup[];
  sharingPlans: PlanCost[];
  layers: LayerRow[];
}

function layerMacs(m: Module, input: number[], output: number[]): number {
  if (m instanceof Conv2d) {
    const [, oc, oh, ow] = output as [number, number, number, number];
    return oc * oh * ow * (m.inChannels / m.groups) * m.kernelSize[0] * m.kernelSize[1];
  }
  if (m instanceof Linear) {
    const rows = output.slice(1, -1).reduce((a, b) => a * b, 1);
    return rows * m.inFeatures * m.outFeatures;
  }
  void input;
  return 0;
}

/** Runs one image through the model in eval mode, recording each module's output shape and MACs. */
export function traceShapes(model: Module, inputShape: number[]): Map<Module, { output: number[]; macs: number }> {
  const seen = new Map<Module, { output: number[]; macs: number }>();
  const patched: Module[] = [];
  const wasTraining = model.modules().map((m) => m.training);
  for (const m of model.modules()) {
    const orig = m.forward;
    // An own-property wrapper shadows the prototype's forward just for this pass.
    Object.defineProperty(m, 'forward', {
      configurable: true,
      writable: true,
      value: (x: Tensor): Tensor => {
        const y = orig.call(m, x);
        if (!seen.has(m)) seen.set(m, { output: y.shape, macs: layerMacs(m, x.shape, y.shape) });
        return y;
      },
    });
    patched.push(m);
  }
  try {
    model.eval();
    t.noGrad(() =>
      t.tidy(() => {
        const p = model.parameters()[0];
        model.forward(t.zeros([1, ...inputShape], { device: p?.device ?? 'cpu', dtype: p?.dtype ?? 'float32' }));
      }),
    );
  } finally {
    for (const m of patched) delete (m as unknown as Record<string, unknown>).forward;
    model.modules().forEach((m, i) => {
      m.training = wasTraining[i]!;
    });
  }
  return seen;
}

/** The `kshare info` object for a model. */
export function modelSummary(model: Module, name: string, classes: number, opts: { inputShape?: number[] } = {}): ModelSummary {
  const inputShape = opts.inputShape ?? [3, 32, 32];
  const groups = shareGroups(model);
  const analysis = analyzeSharing(model);
  const unshared = analysis.plans.find((p) => p.name === 'none')!.params;
  const trace = traceShapes(model, inputShape);
  const canonical = new Map<Tensor, string>();
  for (const [n, p] of model.namedParameters()) canonical.set(p, n);
  const counted = new Set<Tensor>();
  const layers: LayerRow[] = [];
  for (const [path, m] of model.namedModules()) {
    if (path === '') continue;
    let params = 0;
    for (const [, p] of m.ownParameters()) {
      if (p && p.requiresGrad && !counted.has(p)) {
        counted.add(p);
        params += p.size;
      }
    }
    const w = m instanceof Conv2d ? m.weight : null;
    const group = w ? groups.find((g) => g.layers.includes(path)) : undefined;
    const tr = trace.get(m);
    layers.push({
      name: path,
      type: m.typeName,
      config: m.describe(),
      outputShape: tr?.output ?? null,
      params,
      sharedKernel: group ? group.kernel : null,
      macs: tr?.macs ?? 0,
      depth: path.split('.').length - 1,
    });
  }
  let bufferBytes = 0;
  for (const b of model.buffers()) if (t.isFloating(b.dtype)) bufferBytes += 4 * b.size;
  const params = model.numParameters();
  return {
    model: name,
    classes,
    inputShape,
    params,
    paramsUnshared: unshared,
    weightBytes: 4 * params,
    weightBytesUnshared: 4 * unshared,
    bufferBytes,
    macs: layers.reduce((a, l) => a + l.macs, 0),
    shareGroups: groups,
    sharingPlans: analysis.plans,
    layers,
  };
}

/** The summary as an aligned text table plus totals. */
export function formatSummary(s: ModelSummary, opts: { maxDepth?: number } = {}): string {
  const rows = s.layers.filter((l) => opts.maxDepth === undefined || l.depth <= opts.maxDepth);
  const head = ['layer', 'type', 'config', 'output', 'params', 'MACs', 'kernel'];
  const body = rows.map((l) => [
    '  '.repeat(l.depth) + l.name,
    l.type,
    l.config,
    l.outputShape ? `[${l.outputShape.slice(1).join(', ')}]` : '',
    l.params ? l.params.toLocaleString('en-US') : '',
    l.macs ? l.macs.toLocaleString('en-US') : '',
    l.sharedKernel ? `shared: ${l.sharedKernel}` : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === 4 || i === 5 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  const n = (x: number) => x.toLocaleString('en-US');
  const out = [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line), ''];
  out.push(`model ${s.model}, ${s.classes} classes, input [${s.inputShape.join(', ')}]`);
  out.push(`trainable parameters: ${n(s.params)} (without sharing: ${n(s.paramsUnshared)}; ${(100 * (1 - s.params / s.paramsUnshared)).toFixed(1)}% saved)`);
  out.push(`weights: ${n(s.weightBytes)} bytes float32 (without sharing: ${n(s.weightBytesUnshared)}); buffers: ${n(s.bufferBytes)} bytes`);
  out.push(`MACs per image: ${n(s.macs)}`);
  if (s.shareGroups.length) {
    out.push('share groups:');
    for (const g of s.shareGroups)
      out.push(
        `  ${g.kernel}${g.bias ? ` + ${g.bias}` : ''} [${g.shape.join(', ')}] (${g.signature}): ${g.layers.length} layers, ${n(g.params)} params: ${g.layers.join(', ')}`,
      );
  } else {
    out.push('share groups: none');
  }
  return out.join('\n');
}
