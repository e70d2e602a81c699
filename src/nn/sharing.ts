// Kernel-sharing plans for any model: find isomorphic convolutions, price each plan, apply one.
//
// A plan partitions convolutions into share groups; every group uses one kernel (the first
// member's values) and, when all members have a bias and `shareBias` is on, one bias.
import type { Tensor } from '../tensor/index.js';
import type { Module } from './module.js';
import { Conv2d } from './conv.js';
import { signatureMismatch, signatureText, type KernelSignature } from './shared-kernel.js';

/** Which layers a plan may touch: path globs (`*` within one name, `**` across names); a pattern also matches everything below it. */
export interface LayerFilter {
  include?: string[];
  exclude?: string[];
  /** Share only within each of these module subtrees (e.g. the stages ["layer1", "layer2"]); layers outside all scopes stay unshared. */
  scopes?: string[];
}

export interface BiasOption {
  /** Share the bias too when every member of a group has one (default true; the ConvMixer original does). */
  shareBias?: boolean;
}

export type SharingPlan =
  /** Every convolution has its own kernel. */
  | { kind: 'none' }
  /** All isomorphic layers (of each scope) share one kernel: the paper's plan. */
  | ({ kind: 'isomorphic' } & LayerFilter & BiasOption)
  /** Explicit groups of layer paths. */
  | ({ kind: 'groups'; groups: string[][] } & BiasOption)
  /** Within each isomorphism class, consecutive runs of `size` layers share a kernel. */
  | ({ kind: 'consecutive'; size: number } & LayerFilter & BiasOption)
  /** Within each isomorphism class, layer i uses kernel i mod `kernels`. */
  | ({ kind: 'strided'; kernels: number } & LayerFilter & BiasOption);

export const PLAN_KINDS = ['none', 'isomorphic', 'groups', 'consecutive', 'strided'] as const;

export interface ConvEntry {
  path: string;
  conv: Conv2d;
}

/** Every Conv2d of the model with its path, in module order (each module once). */
export function convolutions(model: Module): ConvEntry[] {
  return model
    .namedModules()
    .filter(([, m]) => m instanceof Conv2d)
    .map(([path, m]) => ({ path, conv: m as Conv2d }));
}

export function signatureKey(s: KernelSignature): string {
  return `${s.inChannels}|${s.outChannels}|${s.kernelSize[0]}x${s.kernelSize[1]}|${s.groups}`;
}

function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^.]*';
    else re += c.replace(/[\\^$+?.()|[\]{}]/g, '\\$&');
  }
  // A pattern names a layer or a subtree: "layer2" matches "layer2.0.conv1".
  return new RegExp(`^${re}(\\..*)?$`);
}

export function matchesAny(path: string, globs: string[] | undefined): boolean {
  return !!globs && globs.some((g) => globToRegExp(g).test(path));
}

function selected(path: string, f: LayerFilter): boolean {
  if (f.include && !matchesAny(path, f.include)) return false;
  if (matchesAny(path, f.exclude)) return false;
  if (f.scopes && !matchesAny(path, f.scopes)) return false;
  return true;
}

/** Isomorphism classes (in order of first appearance), split by scope when scopes are given. */
function classesOf(convs: ConvEntry[], f: LayerFilter): ConvEntry[][] {
  const classes = new Map<string, ConvEntry[]>();
  for (const e of convs) {
    if (!selected(e.path, f)) continue;
    const scope = f.scopes ? f.scopes.findIndex((g) => matchesAny(e.path, [g])) : -1;
    const key = `${scope}#${signatureKey(e.conv)}`;
    const list = classes.get(key);
    if (list) list.push(e);
    else classes.set(key, [e]);
  }
  return [...classes.values()];
}

function checkPlan(plan: SharingPlan): void {
  if (!plan || typeof plan !== 'object' || !(PLAN_KINDS as readonly string[]).includes((plan as { kind: string }).kind)) {
    throw new Error(`sharing plan: 'kind' must be one of ${PLAN_KINDS.join(', ')}, got ${JSON.stringify((plan as { kind?: unknown } | null)?.kind)}`);
  }
  if (plan.kind === 'consecutive' && !(Number.isInteger(plan.size) && plan.size >= 1))
    throw new Error(`sharing plan 'consecutive': size must be a positive integer, got ${JSON.stringify(plan.size)}`);
  if (plan.kind === 'strided' && !(Number.isInteger(plan.kernels) && plan.kernels >= 1))
    throw new Error(`sharing plan 'strided': kernels must be a positive integer, got ${JSON.stringify(plan.kernels)}`);
  if (plan.kind === 'groups' && !(Array.isArray(plan.groups) && plan.groups.every((g) => Array.isArray(g) && g.every((p) => typeof p === 'string')))) {
    throw new Error("sharing plan 'groups': groups must be an array of arrays of layer paths");
  }
}

/** The share groups (two or more layers each) a plan makes on a model, validated. */
export function planGroups(model: Module, plan: SharingPlan, convs = convolutions(model)): ConvEntry[][] {
  checkPlan(plan);
  let groups: ConvEntry[][];
  switch (plan.kind) {
    case 'none':
      groups = [];
      break;
    case 'isomorphic':
      groups = classesOf(convs, plan);
      break;
    case 'consecutive':
      groups = classesOf(convs, plan).flatMap((c) => {
        const out: ConvEntry[][] = [];
        for (let i = 0; i < c.length; i += plan.size) out.push(c.slice(i, i + plan.size));
        return out;
      });
      break;
    case 'strided':
      groups = classesOf(convs, plan).flatMap((c) => {
        const out: ConvEntry[][] = Array.from({ length: Math.min(plan.kernels, c.length) }, () => []);
        c.forEach((e, i) => out[i % plan.kernels]!.push(e));
        return out;
      });
      break;
    case 'groups': {
      const byPath = new Map(convs.map((e) => [e.path, e]));
      const used = new Map<string, number>();
      groups = plan.groups.map((g, gi) =>
        g.map((p) => {
          const e = byPath.get(p);
          if (!e) {
            const near = convs
              .map((c) => c.path)
              .filter((c) => c.includes(p) || p.includes(c))
              .slice(0, 5);
            throw new Error(
              `sharing plan: group ${gi} names '${p}', which is not a Conv2d of this model${near.length ? ` (did you mean ${near.map((n) => `'${n}'`).join(', ')}?)` : ''}`,
            );
          }
          if (used.has(p)) throw new Error(`sharing plan: layer '${p}' is in group ${used.get(p)} and group ${gi}`);
          used.set(p, gi);
          return e;
        }),
      );
      break;
    }
  }
  groups = groups.filter((g) => g.length >= 2);
  for (const g of groups) {
    const [first, ...rest] = g;
    for (const e of rest) {
      const why = signatureMismatch(first!.conv, e.conv);
      if (why) {
        throw new Error(`cannot share a kernel between '${first!.path}' (${signatureText(first!.conv)}) and '${e.path}' (${signatureText(e.conv)}): ${why}`);
      }
    }
  }
  return groups;
}

function groupSharesBias(g: ConvEntry[], plan: SharingPlan): boolean {
  const want = plan.kind === 'none' ? false : (plan.shareBias ?? true);
  return want && g.every((e) => e.conv.bias !== null);
}

/**
 * Rebinds the model's convolutions to a plan: every layer first gets its own copy of its
 * kernel, then each group takes its first member's kernel. Tensors no longer used are freed.
 * Apply plans before creating an optimizer: the parameter list changes.
 */
export function applySharingPlan(model: Module, plan: SharingPlan): ConvEntry[][] {
  const convs = convolutions(model);
  const groups = planGroups(model, plan, convs);
  const before = new Set(model.stateDict().values());
  for (const e of convs) e.conv.unshare();
  // The copies just made are candidates for freeing too: members other than the first drop theirs.
  for (const v of model.stateDict().values()) before.add(v);
  for (const g of groups) {
    const k = g[0]!.conv.asSharedKernel(g[0]!.path, groupSharesBias(g, plan));
    for (const e of g.slice(1)) e.conv.useKernel(k, e.path);
  }
  const after = new Set(model.stateDict().values());
  for (const old of before) if (!after.has(old)) old.dispose();
  return groups;
}

export interface ShareGroup {
  /** Parameter name of the shared weight (its first name in parameter order). */
  kernel: string;
  /** Parameter name of the shared bias, or null when each layer keeps its own (or none). */
  bias: string | null;
  signature: string;
  shape: number[];
  /** Trainable scalars held once instead of once per layer. */
  params: number;
  layers: string[];
  /** Every state-dict name of the shared tensors. */
  aliases: string[];
}

/** The groups of layers that currently use one kernel tensor. */
export function shareGroups(model: Module): ShareGroup[] {
  const names = new Map<Tensor, string[]>();
  for (const [n, v] of model.stateDict()) {
    const l = names.get(v);
    if (l) l.push(n);
    else names.set(v, [n]);
  }
  const byWeight = new Map<Tensor, ConvEntry[]>();
  for (const e of convolutions(model)) {
    const l = byWeight.get(e.conv.weight);
    if (l) l.push(e);
    else byWeight.set(e.conv.weight, [e]);
  }
  const out: ShareGroup[] = [];
  for (const [w, users] of byWeight) {
    if (users.length < 2) continue;
    const b = users[0]!.conv.bias;
    const sharedBias = b !== null && users.every((u) => u.conv.bias === b) ? b : null;
    out.push({
      kernel: names.get(w)![0]!,
      bias: sharedBias ? names.get(sharedBias)![0]! : null,
      signature: signatureText(users[0]!.conv),
      shape: w.shape,
      params: w.size + (sharedBias?.size ?? 0),
      layers: users.map((u) => u.path),
      aliases: [...names.get(w)!, ...(sharedBias ? names.get(sharedBias)! : [])],
    });
  }
  return out;
}

export interface PlanCost {
  name: string;
  plan: SharingPlan;
  /** Distinct convolution kernels under the plan. */
  kernels: number;
  /** Unique trainable parameters of the whole model under the plan. */
  params: number;
  /** Parameters saved compared with no sharing. */
  savedParams: number;
  /** float32 bytes saved compared with no sharing. */
  savedBytes: number;
}

export interface IsomorphismClass {
  signature: string;
  layers: string[];
  /** Scalars of one kernel (weight) and of one bias (0 when the layers have none). */
  weightParams: number;
  biasParams: number;
}

export interface SharingAnalysis {
  classes: IsomorphismClass[];
  current: { params: number; groups: ShareGroup[] };
  plans: PlanCost[];
}

/** Parameters of the conv layers under a partition into groups (the rest of the model is unchanged). */
function convParamsUnder(convs: ConvEntry[], groups: ConvEntry[][], plan: SharingPlan): { params: number; kernels: number } {
  const grouped = new Set<Conv2d>();
  let params = 0,
    kernels = 0;
  for (const g of groups) {
    const c = g[0]!.conv;
    const wSize = (c.inChannels / c.groups) * c.outChannels * c.kernelSize[0] * c.kernelSize[1];
    const sharedBias = groupSharesBias(g, plan);
    params += wSize + (sharedBias ? c.outChannels : 0);
    for (const e of g) {
      grouped.add(e.conv);
      if (!sharedBias && e.conv.bias) params += e.conv.outChannels;
    }
    kernels++;
  }
  for (const e of convs) {
    if (grouped.has(e.conv)) continue;
    params += e.conv.weight.size + (e.conv.bias?.size ?? 0);
    kernels++;
  }
  return { params, kernels };
}

/** Standard plans worth pricing on a model: none, the paper's, and some finer-grained ones. */
export function candidatePlans(model: Module): { name: string; plan: SharingPlan }[] {
  const top = model.namedChildren().map(([n]) => n);
  const plans: { name: string; plan: SharingPlan }[] = [
    { name: 'none', plan: { kind: 'none' } },
    { name: 'isomorphic', plan: { kind: 'isomorphic' } },
    { name: 'isomorphic per top-level module', plan: { kind: 'isomorphic', scopes: top } },
    { name: 'isomorphic weights only', plan: { kind: 'isomorphic', shareBias: false } },
  ];
  for (const size of [2, 4]) plans.push({ name: `consecutive ${size}`, plan: { kind: 'consecutive', size } });
  for (const kernels of [2, 4]) plans.push({ name: `strided ${kernels}`, plan: { kind: 'strided', kernels } });
  return plans;
}

/** Finds the isomorphic convolutions and, for each candidate plan, what it would save. */
export function analyzeSharing(model: Module, plans = candidatePlans(model)): SharingAnalysis {
  const convs = convolutions(model);
  const classes = classesOf(convs, {}).map((c) => {
    const k = c[0]!.conv;
    return {
      signature: signatureText(k),
      layers: c.map((e) => e.path),
      weightParams: (k.inChannels / k.groups) * k.outChannels * k.kernelSize[0] * k.kernelSize[1],
      biasParams: k.bias ? k.outChannels : 0,
    };
  });
  const total = model.numParameters();
  // Conv tensors currently held (once each), to price plans against the rest of the model.
  const convTensors = new Set<Tensor>();
  for (const e of convs) {
    convTensors.add(e.conv.weight);
    if (e.conv.bias) convTensors.add(e.conv.bias);
  }
  let currentConv = 0;
  for (const x of convTensors) if (x.requiresGrad) currentConv += x.size;
  const rest = total - currentConv;
  const unshared = rest + convParamsUnder(convs, [], { kind: 'none' }).params;
  const seen = new Set<string>();
  const out: PlanCost[] = [];
  for (const { name, plan } of plans) {
    const groups = planGroups(model, plan, convs);
    // A plan that makes the same groups as an earlier one adds nothing to the table.
    const key = JSON.stringify(groups.map((g) => [groupSharesBias(g, plan), ...g.map((e) => e.path)]));
    if (seen.has(key)) continue;
    seen.add(key);
    const c = convParamsUnder(convs, groups, plan);
    const params = rest + c.params;
    out.push({ name, plan, kernels: c.kernels, params, savedParams: unshared - params, savedBytes: 4 * (unshared - params) });
  }
  return { classes, current: { params: total, groups: shareGroups(model) }, plans: out };
}

/**
 * A plan from a short text (command lines): "none", "isomorphic", "consecutive:K",
 * "strided:M", "groups:a,b;c,d", optionally suffixed "/weights" to keep per-layer biases,
 * or a JSON plan object.
 */
export function parseSharingPlan(text: string): SharingPlan {
  const s = text.trim();
  if (s.startsWith('{')) {
    let plan: unknown;
    try {
      plan = JSON.parse(s);
    } catch (e) {
      throw new Error(`sharing plan: not valid JSON (${(e as Error).message})`);
    }
    checkPlan(plan as SharingPlan);
    return plan as SharingPlan;
  }
  const [body, suffix] = s.split('/') as [string, string | undefined];
  if (suffix !== undefined && suffix !== 'weights') throw new Error(`sharing plan '${text}': the only suffix is '/weights'`);
  const bias = suffix === 'weights' ? { shareBias: false } : {};
  const [kind, arg] = body.split(':') as [string, string | undefined];
  const int = (v: string | undefined) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`sharing plan '${text}': '${kind}' needs a positive integer after ':'`);
    return n;
  };
  let plan: SharingPlan;
  if (kind === 'none') plan = { kind: 'none' };
  else if (kind === 'isomorphic') plan = { kind: 'isomorphic', ...bias };
  else if (kind === 'consecutive') plan = { kind: 'consecutive', size: int(arg), ...bias };
  else if (kind === 'strided') plan = { kind: 'strided', kernels: int(arg), ...bias };
  else if (kind === 'groups' && arg) plan = { kind: 'groups', groups: arg.split(';').map((g) => g.split(',').map((p) => p.trim())), ...bias };
  else throw new Error(`sharing plan '${text}': expected none, isomorphic, consecutive:K, strided:M, groups:a,b;c,d (optionally /weights) or a JSON object`);
  checkPlan(plan);
  return plan;
}
