// The Module base: named parameters, buffers and child modules, in the spirit of PyTorch's.
//
// Parameters are plain Tensors with requiresGrad. Kernel sharing is object identity: a shared
// kernel is the very same Tensor registered in several modules. So `parameters()` lists it
// once (under its first name, PyTorch order) while `stateDict()` lists every alias name.
import * as t from '../tensor/index.js';
import { Tensor, type Device, type DType, type MemoryFormat } from '../tensor/index.js';

export type StateDict = Map<string, Tensor>;

export interface LoadStateDictOptions {
  /** Require every model key (or another alias of the same tensor) and no unknown keys. Default true. */
  strict?: boolean;
}

export interface ToTarget {
  device?: Device;
  /** Casts floating parameters and buffers only (integer buffers such as counters keep their type). */
  dtype?: DType;
  /** Applies to 4-D tensors only (conv kernels), as in PyTorch. */
  memoryFormat?: MemoryFormat;
}

/** At most n names, then "and k more": keeps error messages readable on big models. */
export function listNames(names: string[], n = 8): string {
  const shown = names
    .slice(0, n)
    .map((s) => `'${s}'`)
    .join(', ');
  return names.length > n ? `${shown} and ${names.length - n} more` : shown;
}

export abstract class Module {
  training = true;
  readonly #params = new Map<string, Tensor | null>();
  readonly #buffers = new Map<string, Tensor | null>();
  readonly #children = new Map<string, Module>();

  abstract forward(x: Tensor): Tensor;

  /**
   * Whether forward was replaced on this instance (shape tracing in models/summary.ts, a user's
   * hook): code that would run the layer through a fused kernel instead of its forward then runs
   * the forward, so the replacement sees the call.
   */
  get forwardReplaced(): boolean {
    return Object.prototype.hasOwnProperty.call(this, 'forward');
  }

  /** A short description of the layer's configuration, for tables (PyTorch's extra_repr). */
  describe(): string {
    return '';
  }

  /** The class name shown in layer tables. */
  get typeName(): string {
    return this.constructor.name;
  }

  // ---- registration (used by subclasses) ----

  protected registerParameter(name: string, p: Tensor | null): Tensor | null {
    checkName(name, this);
    if (this.#buffers.has(name) || this.#children.has(name))
      throw new Error(`${this.typeName}: '${name}' is already registered as something other than a parameter`);
    if (p) t.keep(p);
    this.#params.set(name, p);
    return p;
  }

  protected registerBuffer(name: string, b: Tensor | null): Tensor | null {
    checkName(name, this);
    if (this.#params.has(name) || this.#children.has(name))
      throw new Error(`${this.typeName}: '${name}' is already registered as something other than a buffer`);
    if (b) t.keep(b);
    this.#buffers.set(name, b);
    return b;
  }

  protected registerModule<M extends Module>(name: string, m: M): M {
    checkName(name, this);
    if (!(m instanceof Module)) throw new TypeError(`${this.typeName}: child '${name}' is not a Module`);
    if (this.#params.has(name) || this.#buffers.has(name)) throw new Error(`${this.typeName}: '${name}' is already registered as a parameter or buffer`);
    this.#children.set(name, m);
    return m;
  }

  /**
   * Rebinds an existing parameter slot to another tensor (e.g. a shared kernel), keeping its
   * position in the parameter order. Returns the tensor that was there; the caller decides
   * whether it is still used elsewhere before disposing it.
   */
  protected rebindParameter(name: string, p: Tensor | null): Tensor | null {
    if (!this.#params.has(name)) throw new Error(`${this.typeName}: no parameter '${name}' to rebind`);
    const old = this.#params.get(name) ?? null;
    if (p) t.keep(p);
    this.#params.set(name, p);
    return old;
  }

  /** The tensor registered under a direct parameter name (null when registered empty). */
  getParameter(name: string): Tensor | null {
    if (!this.#params.has(name)) throw new Error(`${this.typeName}: no parameter '${name}'`);
    return this.#params.get(name) ?? null;
  }

  getBuffer(name: string): Tensor | null {
    if (!this.#buffers.has(name)) throw new Error(`${this.typeName}: no buffer '${name}'`);
    return this.#buffers.get(name) ?? null;
  }

  /** Direct parameters in registration order, including empty (null) slots. */
  ownParameters(): [string, Tensor | null][] {
    return [...this.#params];
  }

  ownBuffers(): [string, Tensor | null][] {
    return [...this.#buffers];
  }

  // ---- traversal ----

  namedChildren(): [string, Module][] {
    return [...this.#children];
  }

  children(): Module[] {
    return [...this.#children.values()];
  }

  /** This module and all descendants, depth first, each module once (PyTorch's named_modules). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [];
    const seen = new Set<Module>();
    const walk = (m: Module, p: string) => {
      if (seen.has(m)) return;
      seen.add(m);
      out.push([p, m]);
      for (const [n, c] of m.#children) walk(c, p ? `${p}.${n}` : n);
    };
    walk(this, prefix);
    return out;
  }

  modules(): Module[] {
    return this.namedModules().map(([, m]) => m);
  }

  /** Every parameter once, under its first name, in PyTorch's order (tree order, weight before bias). */
  namedParameters(): [string, Tensor][] {
    return uniqueEntries(this.#walkState('params'));
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** Every buffer once, under its first name. */
  namedBuffers(): [string, Tensor][] {
    return uniqueEntries(this.#walkState('buffers'));
  }

  buffers(): Tensor[] {
    return this.namedBuffers().map(([, b]) => b);
  }

  /** Every state name (aliases of shared tensors included) to the live tensor: not copies. */
  stateDict(): StateDict {
    return new Map(this.#walkState('both'));
  }

  /** PyTorch's state_dict order: per module its parameters, then its buffers, then its children. */
  #walkState(which: 'params' | 'buffers' | 'both'): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const walk = (m: Module, p: string) => {
      if (which !== 'buffers') for (const [n, v] of m.#params) if (v) out.push([p + n, v]);
      if (which !== 'params') for (const [n, v] of m.#buffers) if (v) out.push([p + n, v]);
      for (const [n, c] of m.#children) walk(c, `${p}${n}.`);
    };
    walk(this, '');
    return out;
  }

  /** Number of distinct trainable scalars: a shared kernel counts once. */
  numParameters(): number {
    let n = 0;
    for (const p of this.parameters()) if (p.requiresGrad) n += p.size;
    return n;
  }

  // ---- modes ----

  train(on = true): this {
    for (const m of this.modules()) m.training = on;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Turns gradient tracking of every parameter on or off (freezing). */
  requiresGrad_(on = true): this {
    for (const p of this.parameters()) p.requiresGrad = on;
    return this;
  }

  zeroGrad(): void {
    for (const p of this.parameters()) p.grad = null;
  }

  // ---- state in and out ----

  /**
   * Copies values from `sd` into the model's tensors in place, so shared tensors stay shared
   * and optimizers keep their references. A shared tensor needs only one of its names; if
   * several are given they must hold equal values. Nothing is written unless every check passes.
   */
  loadStateDict(sd: Map<string, Tensor> | Record<string, Tensor>, opts: LoadStateDictOptions = {}): void {
    const strict = opts.strict ?? true;
    const src = sd instanceof Map ? sd : new Map(Object.entries(sd));
    const own = this.stateDict();
    const byTensor = new Map<Tensor, string[]>();
    for (const [k, v] of own) {
      const names = byTensor.get(v);
      if (names) names.push(k);
      else byTensor.set(v, [k]);
    }
    const problems: string[] = [];
    const missing: string[] = [];
    const plan: [Tensor, Tensor, string][] = [];
    for (const [target, names] of byTensor) {
      const given = names.filter((n) => src.has(n));
      if (given.length === 0) {
        missing.push(...names);
        continue;
      }
      for (const n of given) {
        const v = src.get(n)!;
        if (!(v instanceof Tensor)) {
          problems.push(`'${n}' is not a Tensor`);
          continue;
        }
        if (v.isDisposed) {
          problems.push(`'${n}' was disposed`);
          continue;
        }
        if (!sameShape(v.shape, target.shape)) problems.push(`'${n}' has shape [${v.shape}], the model expects [${target.shape}]`);
      }
      if (problems.length) continue;
      const first = src.get(given[0]!)!;
      for (const n of given.slice(1)) {
        const other = src.get(n)!;
        if (other !== first && !tensorsEqual(first, other)) {
          problems.push(`'${given[0]}' and '${n}' name one shared tensor of this model but hold different values`);
        }
      }
      plan.push([target, first, given[0]!]);
    }
    const unexpected = [...src.keys()].filter((k) => !own.has(k));
    if (strict && missing.length) problems.push(`missing keys: ${listNames(missing)}`);
    if (strict && unexpected.length) problems.push(`unexpected keys: ${listNames(unexpected)}`);
    if (problems.length) throw new Error(`loadStateDict (${this.typeName}): ${problems.join('; ')}`);
    t.noGrad(() => {
      for (const [target, value] of plan) t.copy_(target, value);
    });
  }

  /**
   * Moves and/or casts every parameter and buffer in place (the Tensor objects stay the same,
   * so shared kernels stay shared and requiresGrad is kept). Gradients move along.
   */
  to(target: Device | ToTarget): this {
    const o: ToTarget = typeof target === 'string' ? { device: target } : target;
    const seen = new Set<Tensor>();
    t.noGrad(() => {
      for (const [, v] of this.#walkState('both')) {
        if (seen.has(v)) continue;
        seen.add(v);
        convertInPlace(v, o);
        const g = v.grad;
        if (g) {
          const moved = convertCopy(g, o, v);
          v.grad = moved ?? g;
          moved?.dispose();
          g.dispose();
        }
      }
    });
    return this;
  }

  /** Frees every parameter and buffer of the tree (the module is unusable afterwards). */
  dispose(): void {
    const seen = new Set<Tensor>();
    for (const [, v] of this.#walkState('both')) {
      if (!seen.has(v)) {
        seen.add(v);
        v.dispose();
      }
    }
  }
}

function checkName(name: string, m: Module): void {
  if (typeof name !== 'string' || name === '' || name.includes('.')) {
    throw new Error(`${m.typeName}: bad member name ${JSON.stringify(name)} (non-empty, no dots)`);
  }
}

function uniqueEntries(entries: [string, Tensor][]): [string, Tensor][] {
  const seen = new Set<Tensor>();
  const out: [string, Tensor][] = [];
  for (const [n, v] of entries) {
    if (!seen.has(v)) {
      seen.add(v);
      out.push([n, v]);
    }
  }
  return out;
}

function sameShape(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function tensorsEqual(a: Tensor, b: Tensor): boolean {
  if (a.isSameTensor(b)) return true;
  return t.tidy(() => {
    const bb = b.to({ dtype: a.dtype, device: a.device });
    return t.all(t.eq(a, bb)).item() === 1;
  });
}

/** The converted tensor, or null when nothing would change. `like` decides what applies. */
function convertCopy(x: Tensor, o: ToTarget, like: Tensor): Tensor | null {
  const dtype = o.dtype && t.isFloating(like.dtype) ? o.dtype : undefined;
  const memoryFormat = o.memoryFormat && like.rank === 4 ? o.memoryFormat : undefined;
  if (o.device === undefined && dtype === undefined && memoryFormat === undefined) return null;
  const y = x.to({ device: o.device, dtype, memoryFormat });
  if (y.isSameTensor(x)) {
    y.dispose();
    return null;
  }
  return y;
}

function convertInPlace(x: Tensor, o: ToTarget): void {
  const y = convertCopy(x, o, x);
  if (!y) return;
  x.setData_(y);
  y.dispose();
}
