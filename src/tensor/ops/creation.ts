// Tensor creation: constants, ranges, random values (seedable), and host data.
import { native, type GeneratorHandle } from '../native.js';
import { runKernel, runKernelInPlace } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { dtypeCode, dtypeOfTypedArray, elementBytes, normalizeDevice, type DType, type Device } from '../dtype.js';
import { shapeArg, intArg, numberArg, tensorArg, optionsArg, describe } from '../validate.js';

export interface CreateOptions {
  dtype?: DType;
  device?: Device;
  requiresGrad?: boolean;
}

function finish(t: Tensor, o: CreateOptions): Tensor {
  if (o.requiresGrad) t.requiresGrad = true;
  return t;
}

function dev(op: string, o: CreateOptions): string | null {
  return optionsArg(op, o).device === undefined ? null : normalizeDevice(o.device!, op);
}

function dt(op: string, o: CreateOptions, fallback: DType = 'float32'): DType {
  const d = optionsArg(op, o).dtype ?? fallback;
  dtypeCode(d, op); // validates
  return d;
}

/** Options and their generator, if any, must be what they claim (a stray value would silently use the global stream). */
function checkGenerator(op: string, g: unknown): void {
  if (g !== undefined && g !== null && !(g instanceof Generator)) throw new TypeError(`${op}: 'generator' must be a Generator, got ${describe(g)}`);
}

export function zeros(shape: number[], o: CreateOptions = {}): Tensor {
  return finish(wrap(runKernel('zeros', 'zeros', [shapeArg('zeros', shape), dt('zeros', o), null, dev('zeros', o)])), o);
}

export function ones(shape: number[], o: CreateOptions = {}): Tensor {
  return finish(wrap(runKernel('ones', 'ones', [shapeArg('ones', shape), dt('ones', o), null, dev('ones', o)])), o);
}

export function full(shape: number[], value: number, o: CreateOptions = {}): Tensor {
  numberArg('full', 'value', value);
  return finish(wrap(runKernel('full', 'full', [shapeArg('full', shape), value, dt('full', o), null, dev('full', o)])), o);
}

export function zerosLike(x: Tensor): Tensor {
  return wrap(runKernel('zerosLike', 'zerosLike', [tensorArg('zerosLike', 'x', x).handle]));
}

export function onesLike(x: Tensor): Tensor {
  return wrap(runKernel('onesLike', 'onesLike', [tensorArg('onesLike', 'x', x).handle]));
}

export function fullLike(x: Tensor, value: number): Tensor {
  return wrap(runKernel('fullLike', 'fullLike', [tensorArg('fullLike', 'x', x).handle, value]));
}

/** Values from start (inclusive) to end (exclusive) by step; arange(n) = 0..n-1 as int64. */
export function arange(start: number, end?: number, step = 1, o: CreateOptions = {}): Tensor {
  if (end === undefined) [start, end] = [0, start];
  numberArg('arange', 'start', start);
  numberArg('arange', 'end', end);
  if (step === 0) throw new RangeError('arange: step must not be zero');
  const integral = Number.isInteger(start) && Number.isInteger(end) && Number.isInteger(step);
  const d = optionsArg('arange', o).dtype ?? (integral ? 'int64' : 'float32');
  return finish(wrap(runKernel('arange', 'arangeStartStep', [start, end, step, d, null, dev('arange', o)])), o);
}

/** A seedable random stream, independent of the global one. */
export class Generator {
  readonly handle: GeneratorHandle;
  constructor(
    seed: number,
    readonly device: Device = 'cpu',
  ) {
    intArg('Generator', 'seed', seed, 0);
    this.handle = native.newGenerator(normalizeDevice(device, 'Generator'), seed);
  }
  /** The generator's state as a uint8 tensor (for checkpoints). */
  getState(): Tensor {
    return wrap(native.generatorState(this.handle));
  }
  setState(state: Tensor): void {
    native.generatorState(this.handle, state.handle);
  }
}

export interface RandomOptions extends CreateOptions {
  generator?: Generator;
}

export function randn(shape: number[], o: RandomOptions = {}): Tensor {
  shapeArg('randn', shape);
  checkGenerator('randn', optionsArg('randn', o).generator);
  const t = o.generator
    ? runKernel('randn', 'randnGen', [shape, o.generator.handle, dt('randn', o), null, dev('randn', o)])
    : runKernel('randn', 'randn', [shape, dt('randn', o), null, dev('randn', o)]);
  return finish(wrap(t), o);
}

/** Uniform values in [0, 1). */
export function rand(shape: number[], o: RandomOptions = {}): Tensor {
  shapeArg('rand', shape);
  checkGenerator('rand', optionsArg('rand', o).generator);
  const t = o.generator
    ? runKernel('rand', 'randGen', [shape, o.generator.handle, dt('rand', o), null, dev('rand', o)])
    : runKernel('rand', 'rand', [shape, dt('rand', o), null, dev('rand', o)]);
  return finish(wrap(t), o);
}

/** Integers in [low, high). */
export function randint(low: number, high: number, shape: number[], o: RandomOptions = {}): Tensor {
  intArg('randint', 'low', low);
  intArg('randint', 'high', high);
  if (high <= low) throw new RangeError(`randint: high (${high}) must be greater than low (${low})`);
  shapeArg('randint', shape);
  const d = dt('randint', o, 'int64');
  checkGenerator('randint', o.generator);
  const t = o.generator
    ? runKernel('randint', 'randintGen', [low, high, shape, o.generator.handle, d, null, dev('randint', o)])
    : runKernel('randint', 'randint', [low, high, shape, d, null, dev('randint', o)]);
  return wrap(t);
}

/** A random permutation of 0..n-1 (int64). */
export function randperm(n: number, o: RandomOptions = {}): Tensor {
  intArg('randperm', 'n', n, 0);
  checkGenerator('randperm', optionsArg('randperm', o).generator);
  const t = o.generator
    ? runKernel('randperm', 'randpermGen', [n, o.generator.handle, 'int64', null, dev('randperm', o)])
    : runKernel('randperm', 'randperm', [n, 'int64', null, dev('randperm', o)]);
  return wrap(t);
}

/** Fills x in place with N(mean, std) values (used by initialisers). */
export function normal_(x: Tensor, mean = 0, std = 1, generator?: Generator): Tensor {
  checkGenerator('normal_', generator);
  runKernelInPlace('normal_', 'normal_', [tensorArg('normal_', 'x', x).handle, mean, std, generator?.handle ?? null]);
  return x;
}

/** Fills x in place with U(low, high) values. */
export function uniform_(x: Tensor, low = 0, high = 1, generator?: Generator): Tensor {
  checkGenerator('uniform_', generator);
  runKernelInPlace('uniform_', 'uniform_', [tensorArg('uniform_', 'x', x).handle, low, high, generator?.handle ?? null]);
  return x;
}

/** Seeds the global random streams of every device. */
export function manualSeed(seed: number): void {
  intArg('manualSeed', 'seed', seed, 0);
  native.manualSeed(seed);
}

/**
 * A tensor from host values. `data` may be a typed array (copied once into libtorch memory),
 * a Node Buffer, or a number array. Default shape: 1-D of data's length.
 */
export function tensor(data: ArrayBufferView | readonly number[], shape?: number[], o: CreateOptions = {}): Tensor {
  if (!Array.isArray(data) && !ArrayBuffer.isView(data))
    throw new TypeError(`tensor: data must be a typed array, a Buffer or an array of numbers, got ${describe(data)}`);
  if (optionsArg('tensor', o).dtype !== undefined) dtypeCode(o.dtype!, 'tensor');
  if (o.device !== undefined) normalizeDevice(o.device, 'tensor');
  let view: ArrayBufferView;
  let dtype: DType;
  if (Array.isArray(data)) {
    dtype = o.dtype ?? 'float32';
    const integral = dtype === 'int64' || dtype === 'int32' || dtype === 'uint8' || dtype === 'bool';
    const bad = (data as unknown[]).findIndex((v) => typeof v !== 'number' || (integral && !Number.isFinite(v)));
    if (bad >= 0) throw new TypeError(`tensor: element ${bad} (${describe(data[bad])}) is not a ${integral ? 'finite ' : ''}number for dtype ${dtype}`);
    const n = data.length;
    view =
      dtype === 'int64'
        ? BigInt64Array.from(data as number[], (v) => BigInt(Math.trunc(v)))
        : dtype === 'int32'
          ? Int32Array.from(data as number[])
          : dtype === 'float64'
            ? Float64Array.from(data as number[])
            : dtype === 'uint8' || dtype === 'bool'
              ? Uint8Array.from(data as number[])
              : Float32Array.from(data as number[]);
    if (dtype === 'float16' || dtype === 'bfloat16') {
      const t = tensor(view, shape ?? [n], { device: 'cpu' });
      try {
        return finish(t.to({ dtype, device: o.device }), o);
      } finally {
        t.dispose();
      }
    }
  } else {
    view = data as ArrayBufferView;
    dtype = o.dtype ?? dtypeOfTypedArray(view, 'tensor');
  }
  const count = view.byteLength / elementBytes(dtype);
  const s = shapeArg('tensor', shape ?? [count]);
  const numel = s.reduce((a, b) => a * b, 1);
  if (numel !== count) throw new RangeError(`tensor: shape [${s}] needs ${numel} elements of ${dtype}, data has ${count}`);
  const t = wrap(native.fromBuffer(view, s, dtypeCode(dtype)));
  if (o.device && normalizeDevice(o.device) !== 'cpu') {
    try {
      return finish(t.to(o.device), o);
    } catch (e) {
      throw new Error(`tensor: ${(e as Error).message}`);
    } finally {
      t.dispose();
    }
  }
  return finish(t, o);
}

/** A scalar tensor. */
export function scalar(value: number, o: CreateOptions = {}): Tensor {
  return full([], value, o);
}

/** Gamma(alpha, 1) samples, one per element of `alpha` (a floating tensor of shapes > 0). */
export function standardGamma(alpha: Tensor, generator?: Generator): Tensor {
  tensorArg('standardGamma', 'alpha', alpha);
  if (alpha.dtype !== 'float32' && alpha.dtype !== 'float64') throw new TypeError(`standardGamma: 'alpha' must be float32 or float64, got ${alpha.dtype}`);
  return wrap(runKernel('standardGamma', 'standardGamma', [alpha.handle, generator?.handle ?? null]));
}
