// Tensor lifetime: explicit scopes instead of the garbage collector.
//
// `tidy(fn)` records every tensor created while fn runs and disposes all of them except
// what fn returns (and what was `keep()`-ed); returned tensors move to the enclosing scope.
// Outside any scope, tensors live until `dispose()`. `liveTensors()` counts what the addon
// still holds, so a training loop can assert that it stays flat.
import { native } from './native.js';

export interface Disposable {
  dispose(): void;
}

interface Scope {
  tracked: Disposable[];
}

const scopes: Scope[] = [];
const kept = new WeakSet<Disposable>();

/** Called by Tensor's constructor. */
export function track(t: Disposable): void {
  const s = scopes[scopes.length - 1];
  if (s) s.tracked.push(t);
}

/** Exempts a tensor from disposal by enclosing `tidy` scopes. */
export function keep<T extends Disposable>(t: T): T {
  kept.add(t);
  return t;
}

/**
 * Every tensor in a value: a tensor, or arrays and plain objects holding tensors at any depth
 * (each container visited once, so cycles end).
 */
function collect(value: unknown, out: Set<Disposable>, seen = new Set<object>()): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (typeof (value as Disposable).dispose === 'function' && (value as { __isTensor?: boolean }).__isTensor) {
    out.add(value as Disposable);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collect(v, out, seen);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collect(v, out, seen);
}

/** Runs fn and disposes the tensors it created, except those it returns. */
export function tidy<T>(fn: () => T): T {
  const scope: Scope = { tracked: [] };
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope.tracked) if (!kept.has(t)) t.dispose();
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) throw new Error('tidy: fn must be synchronous (async work would escape the scope)');
  const survivors = new Set<Disposable>();
  collect(result, survivors);
  const parent = scopes[scopes.length - 1];
  for (const t of scope.tracked) {
    if (survivors.has(t) || kept.has(t)) {
      if (parent && !kept.has(t)) parent.tracked.push(t);
    } else {
      t.dispose();
    }
  }
  return result;
}

/** Disposes every tensor found in a value (tensor, array, plain object). */
export function dispose(value: unknown): void {
  const all = new Set<Disposable>();
  collect(value, all);
  for (const t of all) t.dispose();
}

/** Number of tensors the native addon currently holds. */
export function liveTensors(): number {
  return native.liveCount();
}

/** Runs fn with autograd recording off. */
export function noGrad<T>(fn: () => T): T {
  const prev = native.setGradEnabled(false);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

/** Runs fn with autograd recording on (inside a noGrad region). */
export function enableGrad<T>(fn: () => T): T {
  const prev = native.setGradEnabled(true);
  try {
    return fn();
  } finally {
    native.setGradEnabled(prev);
  }
}

export function isGradEnabled(): boolean {
  const prev = native.setGradEnabled(true);
  native.setGradEnabled(prev);
  return prev;
}

/**
 * Whether an op on these tensors would record an autograd graph: grad mode on and one of them
 * requiring grad (null entries skipped). Inference-only fast paths ask this.
 */
export function recordsGraph(tensors: readonly ({ readonly requiresGrad: boolean } | null | undefined)[]): boolean {
  return isGradEnabled() && tensors.some((x) => x?.requiresGrad ?? false);
}
