// Argument checks shared by the op fronts: each names the op and the argument.
import { Tensor } from './tensor.js';
import { isFloating } from './dtype.js';

export class ShapeError extends Error {}

export function tensorArg(op: string, name: string, x: unknown): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`${op}: '${name}' must be a Tensor, got ${describe(x)}`);
  if (x.isDisposed) throw new Error(`${op}: '${name}' was disposed`);
  return x;
}

export function optTensorArg(op: string, name: string, x: unknown): Tensor | null {
  return x === undefined || x === null ? null : tensorArg(op, name, x);
}

export function rankArg(op: string, name: string, x: Tensor, ...ranks: number[]): void {
  if (!ranks.includes(x.rank)) {
    throw new ShapeError(`${op}: '${name}' must have rank ${ranks.join(' or ')}, got shape [${x.shape}]`);
  }
}

export function floatArg(op: string, name: string, x: Tensor): void {
  if (!isFloating(x.dtype)) throw new TypeError(`${op}: '${name}' must be a floating tensor, got ${x.dtype}`);
}

export function sameDevice(op: string, ...pairs: [string, Tensor | null][]): void {
  const present = pairs.filter((p): p is [string, Tensor] => p[1] !== null);
  const first = present[0];
  if (!first) return;
  for (const [n, t] of present) {
    if (t.device !== first[1].device) {
      throw new Error(`${op}: '${n}' is on ${t.device} but '${first[0]}' is on ${first[1].device}`);
    }
  }
}

export function intArg(op: string, name: string, v: unknown, min = -Infinity): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) {
    throw new TypeError(`${op}: '${name}' must be an integer${min > -Infinity ? ` >= ${min}` : ''}, got ${describe(v)}`);
  }
  return v;
}

export function numberArg(op: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || Number.isNaN(v)) throw new TypeError(`${op}: '${name}' must be a number, got ${describe(v)}`);
  return v;
}

export function pairArg(op: string, name: string, v: number | readonly number[], min = 0): [number, number] {
  const arr = typeof v === 'number' ? [v, v] : v;
  if (!Array.isArray(arr) || arr.length !== 2) throw new TypeError(`${op}: '${name}' must be a number or a pair, got ${describe(v)}`);
  for (const e of arr) intArg(op, name, e, min);
  return [arr[0]!, arr[1]!];
}

export function shapeArg(op: string, shape: unknown): number[] {
  if (!Array.isArray(shape)) throw new TypeError(`${op}: shape must be an array of integers, got ${describe(shape)}`);
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < -1) throw new TypeError(`${op}: bad dimension ${describe(d)} in shape [${shape}]`);
  }
  return shape as number[];
}

export function dimArg(op: string, x: Tensor, dim: unknown): number {
  const r = x.rank;
  if (typeof dim !== 'number' || !Number.isInteger(dim) || dim < -Math.max(r, 1) || dim >= Math.max(r, 1)) {
    throw new RangeError(`${op}: dim ${describe(dim)} out of range for shape [${x.shape}]`);
  }
  return dim < 0 ? dim + r : dim;
}

/** An array of integers (the addon would truncate fractions and read NaN as 0). */
export function intListArg(op: string, name: string, v: unknown, min = -Infinity): number[] {
  if (!Array.isArray(v)) throw new TypeError(`${op}: '${name}' must be an array of integers, got ${describe(v)}`);
  for (const e of v) intArg(op, name, e, min);
  return v as number[];
}

/** An options object (undefined means none given). */
export function optionsArg<T extends object>(op: string, o: T | undefined): T {
  if (o === undefined) return {} as T;
  const proto = o !== null && typeof o === 'object' ? Object.getPrototypeOf(o) : undefined;
  if (proto !== Object.prototype && proto !== null) throw new TypeError(`${op}: options must be a plain object, got ${describe(o)}`);
  return o;
}

export function describe(v: unknown): string {
  if (v instanceof Tensor) return v.isDisposed ? 'a disposed Tensor' : v.toString();
  if (Array.isArray(v)) return `[${v.map(describe).join(', ')}]`;
  if (typeof v === 'string') return JSON.stringify(v);
  return String(v);
}
