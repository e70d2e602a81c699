// The Tensor class: a handle to a libtorch tensor plus cached metadata. Operations live in
// ops/*.ts; the methods here are thin conveniences over them.
import { native, type Handle } from './native.js';
import { dtypeCode, dtypeFromCode, typedArrayFor, type DType, type Device } from './dtype.js';
import { track } from './engine.js';
import { runKernelInPlace } from './kernels.js';
import * as ew from './ops/elementwise.js';
import * as red from './ops/reduce.js';
import * as shp from './ops/shape.js';
import * as cv from './ops/convert.js';

export class Tensor {
  readonly __isTensor = true;
  #handle: Handle | null;
  #meta: [number, string, number[]] | null = null;

  /** Wraps a handle returned by the addon; registers it with the current tidy scope. */
  constructor(handle: Handle) {
    this.#handle = handle;
    track(this);
  }

  /** The native handle; throws if the tensor was disposed. */
  get handle(): Handle {
    if (this.#handle === null) throw new Error('tensor was disposed');
    return this.#handle;
  }

  get isDisposed(): boolean {
    return this.#handle === null;
  }

  private get meta(): [number, string, number[]] {
    if (!this.#meta) this.#meta = native.meta(this.handle);
    return this.#meta;
  }

  get shape(): number[] {
    return this.meta[2].slice();
  }
  get rank(): number {
    return this.meta[2].length;
  }
  get dtype(): DType {
    return dtypeFromCode(this.meta[0]);
  }
  get device(): Device {
    return this.meta[1];
  }
  get size(): number {
    return this.meta[2].reduce((a, b) => a * b, 1);
  }
  dim(i: number): number {
    const s = this.meta[2];
    const d = s[i < 0 ? s.length + i : i];
    if (d === undefined) throw new RangeError(`dim ${i} out of range for a rank-${s.length} tensor`);
    return d;
  }

  dispose(): void {
    if (this.#handle !== null) {
      native.dispose(this.#handle);
      this.#handle = null;
      this.#meta = null; // so metadata reads of a disposed tensor throw too
    }
  }
  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- autograd ----
  get requiresGrad(): boolean {
    return native.requiresGrad(this.handle);
  }
  set requiresGrad(v: boolean) {
    native.setRequiresGrad(this.handle, v);
  }
  requiresGrad_(v = true): this {
    native.setRequiresGrad(this.handle, v);
    return this;
  }
  get isLeaf(): boolean {
    return native.isLeaf(this.handle);
  }
  /** The accumulated gradient (a new handle each call: dispose it or read it inside tidy). */
  get grad(): Tensor | null {
    const g = native.grad(this.handle);
    return g ? new Tensor(g) : null;
  }
  set grad(g: Tensor | null) {
    // The addon assigns without checks; a mismatched grad would only fail (or broadcast) later.
    if (g) {
      const [gd, gdev, gs] = native.meta(g.handle),
        [d, dev, s] = native.meta(this.handle);
      if (gd !== d || gdev !== dev || gs.join(',') !== s.join(',')) {
        throw new Error(`grad: assigned gradient ${g} does not match tensor ${this} (shape [${gs}] vs [${s}])`);
      }
    }
    native.setGrad(this.handle, g ? g.handle : null);
  }
  backward(grad?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    if (!grad && this.size !== 1) throw new Error(`backward: output has shape [${this.shape}]; pass a gradient for non-scalar outputs`);
    native.backward([this.handle], grad ? [grad.handle] : null, !!opts.retainGraph);
  }
  /**
   * Rebinds this tensor to src's data (device, dtype, shape, values) in place, keeping its
   * identity and autograd flags: PyTorch's `param.data = src`. Modules move parameters this
   * way so shared kernels stay one object and optimizers keep their references.
   */
  setData_(src: Tensor): this {
    runKernelInPlace('setData_', 'setData', [this.handle, src.handle]);
    this.#meta = null;
    return this;
  }
  /** True when both tensors are the very same libtorch tensor (not a copy). */
  isSameTensor(other: Tensor): boolean {
    return native.sameTensor(this.handle, other.handle);
  }

  // ---- data out ----
  /** Copies the values into a typed array (float16/bfloat16 as raw uint16 bits). */
  dataSync(): ArrayBufferView {
    return typedArrayFor(this.dtype, native.toBuffer(this.handle));
  }
  /**
   * A zero-copy typed-array view of a contiguous CPU tensor's memory (float16/bfloat16 as raw
   * uint16 bits). The view keeps the memory alive by itself; writes go straight to the tensor.
   */
  cpuView(): ArrayBufferView {
    if (this.device !== 'cpu') throw new Error(`cpuView: tensor is on ${this.device}; copy it with dataSync()`);
    return typedArrayFor(this.dtype, native.dataView(this.handle));
  }
  /** Values as a float32 array whatever the dtype. */
  toFloat32Array(): Float32Array {
    if (this.dtype === 'float32') return this.dataSync() as Float32Array;
    const f = cv.to(this, { dtype: 'float32' });
    try {
      return f.dataSync() as Float32Array;
    } finally {
      f.dispose();
    }
  }
  /** Values as plain numbers. */
  toArray(): number[] {
    const d = this.dtype === 'float16' || this.dtype === 'bfloat16' ? this.toFloat32Array() : this.dataSync();
    return Array.from(d as unknown as ArrayLike<number | bigint>, (v) => Number(v));
  }
  /** The single value of a one-element tensor (synchronises with the device). */
  item(): number {
    if (this.size !== 1) throw new Error(`item: tensor has ${this.size} elements, not 1`);
    return this.toArray()[0]!;
  }
  toString(): string {
    return `Tensor(shape=[${this.shape}], dtype=${this.dtype}, device=${this.device})`;
  }

  // ---- conveniences (see ops/*) ----
  add(o: Tensor | number): Tensor {
    return ew.add(this, o);
  }
  sub(o: Tensor | number): Tensor {
    return ew.sub(this, o);
  }
  mul(o: Tensor | number): Tensor {
    return ew.mul(this, o);
  }
  div(o: Tensor | number): Tensor {
    return ew.div(this, o);
  }
  neg(): Tensor {
    return ew.neg(this);
  }
  pow(exponent: number): Tensor {
    return ew.pow(this, exponent);
  }
  sum(dims?: number | number[], keepDim = false): Tensor {
    return red.sum(this, dims, keepDim);
  }
  mean(dims?: number | number[], keepDim = false): Tensor {
    return red.mean(this, dims, keepDim);
  }
  max(): Tensor {
    return red.max(this);
  }
  argmax(dim: number, keepDim = false): Tensor {
    return red.argmax(this, dim, keepDim);
  }
  reshape(shape: number[]): Tensor {
    return shp.reshape(this, shape);
  }
  view(shape: number[]): Tensor {
    return shp.view(this, shape);
  }
  permute(dims: number[]): Tensor {
    return shp.permute(this, dims);
  }
  flatten(start = 0, end = -1): Tensor {
    return shp.flatten(this, start, end);
  }
  to(target: Device | DType | cv.ToOptions): Tensor {
    return cv.to(this, target);
  }
  contiguous(format: cv.MemoryFormat = 'contiguous'): Tensor {
    return cv.contiguous(this, format);
  }
  clone(): Tensor {
    return cv.clone(this);
  }
  detach(): Tensor {
    return cv.detach(this);
  }
}

export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}

/** Wraps what an addon call returned. */
export function wrap(h: unknown): Tensor {
  return new Tensor(h as Handle);
}

export function wrapList(hs: unknown): Tensor[] {
  return (hs as Handle[]).map((h) => new Tensor(h));
}

export { dtypeCode };
