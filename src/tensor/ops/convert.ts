// Conversions between dtypes, devices and memory formats; copies and detaching.
import { runKernel, runKernelInPlace } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { DTYPES, normalizeDevice, type DType, type Device } from '../dtype.js';
import { tensorArg, optionsArg, describe } from '../validate.js';

export type MemoryFormat = 'contiguous' | 'channels_last' | 'preserve';
const FORMATS: MemoryFormat[] = ['contiguous', 'channels_last', 'preserve'];

export interface ToOptions {
  device?: Device;
  dtype?: DType;
  memoryFormat?: MemoryFormat;
  copy?: boolean;
}

/** Moves/casts a tensor. Returns a new handle (to the same tensor when nothing changes). */
export function to(x: Tensor, target: Device | DType | ToOptions): Tensor {
  tensorArg('to', 'x', x);
  let opts: ToOptions;
  if (typeof target === 'string') opts = (DTYPES as readonly string[]).includes(target) ? { dtype: target as DType } : { device: target };
  else if (target !== null && typeof target === 'object') opts = optionsArg('to', target);
  else throw new TypeError(`to: target must be a dtype, a device or options, got ${describe(target)}`);
  const device = opts.device === undefined ? undefined : normalizeDevice(opts.device, 'to');
  if (opts.dtype !== undefined && !(DTYPES as readonly string[]).includes(opts.dtype)) throw new TypeError(`to: unknown dtype '${opts.dtype}'`);
  if (opts.memoryFormat !== undefined && !FORMATS.includes(opts.memoryFormat)) throw new TypeError(`to: unknown memory format '${opts.memoryFormat}'`);
  // aten::to.dtype_layout(self, dtype, layout, device, pin_memory, non_blocking, copy, memory_format)
  return wrap(runKernel('to', 'toDtypeLayout', [x.handle, opts.dtype ?? null, null, device ?? null, null, true, !!opts.copy, opts.memoryFormat ?? null]));
}

export function contiguous(x: Tensor, format: MemoryFormat = 'contiguous'): Tensor {
  tensorArg('contiguous', 'x', x);
  if (!FORMATS.includes(format) || format === 'preserve')
    throw new TypeError(`contiguous: memory format must be 'contiguous' or 'channels_last', got '${format}'`);
  return wrap(runKernel('contiguous', 'contiguous', [x.handle, format]));
}

/** Whether x's strides are dense in the given order, by libtorch's rules (size-1 dims are free). */
export function isContiguous(x: Tensor, format: MemoryFormat = 'contiguous'): boolean {
  tensorArg('isContiguous', 'x', x);
  if (format !== 'contiguous' && format !== 'channels_last')
    throw new TypeError(`isContiguous: memory format must be 'contiguous' or 'channels_last', got '${format}'`);
  const shape = x.shape;
  if (format === 'contiguous' && shape.includes(0)) return true;
  if (format === 'channels_last' && shape.length !== 4) return false;
  const order = format === 'channels_last' ? [1, 3, 2, 0] : shape.map((_, i) => shape.length - 1 - i);
  let expected = 1;
  for (const d of order) {
    if (shape[d] === 1) continue;
    if ((runKernel('isContiguous', 'stride', [x.handle, d]) as number) !== expected) return false;
    expected *= shape[d]!;
  }
  return true;
}

export function clone(x: Tensor): Tensor {
  return wrap(runKernel('clone', 'clone', [tensorArg('clone', 'x', x).handle]));
}

/** A tensor sharing storage but cut from the autograd graph. */
export function detach(x: Tensor): Tensor {
  return wrap(runKernel('detach', 'detach', [tensorArg('detach', 'x', x).handle]));
}

/** Copies src into dst in place (broadcasting, casting and moving as needed). */
export function copy_(dst: Tensor, src: Tensor): Tensor {
  tensorArg('copy_', 'dst', dst);
  tensorArg('copy_', 'src', src);
  runKernelInPlace('copy_', 'copy_', [dst.handle, src.handle]);
  return dst;
}

export function fill_(x: Tensor, value: number): Tensor {
  runKernelInPlace('fill_', 'fill_', [tensorArg('fill_', 'x', x).handle, value]);
  return x;
}

export function zero_(x: Tensor): Tensor {
  runKernelInPlace('zero_', 'zero_', [tensorArg('zero_', 'x', x).handle]);
  return x;
}
