// Shape manipulation, joining, slicing, padding and gathering.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, shapeArg, dimArg, intArg, intListArg, describe } from '../validate.js';

function checkNumel(op: string, x: Tensor, shape: number[]): void {
  const free = shape.filter((d) => d === -1).length;
  if (free > 1) throw new Error(`${op}: only one dimension can be -1, got [${shape}]`);
  const known = shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const n = x.size;
  if (free ? known === 0 || n % known !== 0 : known !== n) {
    throw new Error(`${op}: cannot reshape [${x.shape}] (${n} elements) to [${shape}]`);
  }
}

export function reshape(x: Tensor, shape: number[]): Tensor {
  tensorArg('reshape', 'x', x);
  checkNumel('reshape', x, shapeArg('reshape', shape));
  return wrap(runKernel('reshape', 'reshape', [x.handle, shape]));
}

export function view(x: Tensor, shape: number[]): Tensor {
  tensorArg('view', 'x', x);
  checkNumel('view', x, shapeArg('view', shape));
  return wrap(runKernel('view', 'view', [x.handle, shape]));
}

/**
 * (N, C, H·r, W·r) → (N, C·r², H, W), PyTorch's pixel_unshuffle: output channel c·r² + i·r + j
 * holds pixel (i, j) of every r x r block of channel c.
 */
export function pixelUnshuffle(x: Tensor, factor: number): Tensor {
  const op = 'pixelUnshuffle';
  tensorArg(op, 'x', x);
  intArg(op, 'factor', factor, 1);
  if (x.rank < 3) throw new Error(`${op}: x must have at least 3 dimensions (…, C, H, W), got shape [${x.shape}]`);
  const [h, w] = x.shape.slice(-2) as [number, number];
  if (h % factor || w % factor) throw new Error(`${op}: height ${h} and width ${w} must be multiples of the factor ${factor}`);
  return wrap(runKernel(op, 'pixelUnshuffle', [x.handle, factor]));
}

export function permute(x: Tensor, dims: number[]): Tensor {
  tensorArg('permute', 'x', x);
  if (!Array.isArray(dims) || dims.length !== x.rank) throw new Error(`permute: needs ${x.rank} dims for shape [${x.shape}], got ${describe(dims)}`);
  const norm = dims.map((d) => dimArg('permute', x, d));
  if (new Set(norm).size !== norm.length) throw new Error(`permute: dims ${describe(dims)} are not a permutation`);
  return wrap(runKernel('permute', 'permute', [x.handle, norm]));
}

export function transpose(x: Tensor, d0: number, d1: number): Tensor {
  tensorArg('transpose', 'x', x);
  return wrap(runKernel('transpose', 'transpose', [x.handle, dimArg('transpose', x, d0), dimArg('transpose', x, d1)]));
}

export function flatten(x: Tensor, start = 0, end = -1): Tensor {
  tensorArg('flatten', 'x', x);
  if (x.rank === 0) return reshape(x, [1]);
  const s = dimArg('flatten', x, start),
    e = dimArg('flatten', x, end);
  if (s > e) throw new Error(`flatten: start dim ${start} comes after end dim ${end}`);
  return wrap(runKernel('flatten', 'flatten', [x.handle, s, e]));
}

export function squeeze(x: Tensor, dim: number): Tensor {
  tensorArg('squeeze', 'x', x);
  return wrap(runKernel('squeeze', 'squeezeDim', [x.handle, dimArg('squeeze', x, dim)]));
}

export function unsqueeze(x: Tensor, dim: number): Tensor {
  tensorArg('unsqueeze', 'x', x);
  const r = x.rank + 1;
  if (!Number.isInteger(dim) || dim < -r || dim >= r) throw new RangeError(`unsqueeze: dim ${dim} out of range for shape [${x.shape}]`);
  return wrap(runKernel('unsqueeze', 'unsqueeze', [x.handle, dim < 0 ? dim + r : dim]));
}

export function expand(x: Tensor, shape: number[]): Tensor {
  tensorArg('expand', 'x', x);
  return wrap(runKernel('expand', 'expand', [x.handle, shapeArg('expand', shape)]));
}

function joinArgs(op: string, xs: Tensor[]): void {
  if (!Array.isArray(xs) || xs.length === 0) throw new Error(`${op}: needs a non-empty array of tensors`);
  xs.forEach((t, i) => tensorArg(op, `tensors[${i}]`, t));
}

export function cat(xs: Tensor[], dim = 0): Tensor {
  joinArgs('cat', xs);
  const first = xs[0]!;
  const d = dimArg('cat', first, dim);
  for (const [i, t] of xs.entries()) {
    const s = t.shape;
    if (s.length !== first.rank || s.some((v, j) => j !== d && v !== first.dim(j))) {
      throw new Error(`cat: tensors[${i}] has shape [${s}], incompatible with [${first.shape}] along dim ${d}`);
    }
  }
  return wrap(runKernel('cat', 'cat', [xs.map((t) => t.handle), d]));
}

export function stack(xs: Tensor[], dim = 0): Tensor {
  joinArgs('stack', xs);
  const r = xs[0]!.rank + 1; // stack inserts a new dim
  if (!Number.isInteger(dim) || dim < -r || dim >= r) throw new RangeError(`stack: dim ${describe(dim)} out of range for ${r - 1}-D tensors`);
  const s0 = xs[0]!.shape.join(',');
  for (const [i, t] of xs.entries()) {
    if (t.shape.join(',') !== s0) throw new Error(`stack: tensors[${i}] has shape [${t.shape}], expected [${s0}]`);
  }
  return wrap(runKernel('stack', 'stack', [xs.map((t) => t.handle), dim]));
}

/** x[start:end:step] along dim (a view). */
export function slice(x: Tensor, dim: number, start: number, end: number, step = 1): Tensor {
  tensorArg('slice', 'x', x);
  intArg('slice', 'start', start);
  intArg('slice', 'end', end);
  intArg('slice', 'step', step, 1);
  return wrap(runKernel('slice', 'slice', [x.handle, dimArg('slice', x, dim), start, end, step]));
}

/** x[..., index, ...] at dim (removes the dim). */
export function select(x: Tensor, dim: number, index: number): Tensor {
  tensorArg('select', 'x', x);
  const d = dimArg('select', x, dim);
  const n = x.dim(d);
  if (!Number.isInteger(index) || index < -n || index >= n) throw new RangeError(`select: index ${index} out of range for size ${n} at dim ${d}`);
  return wrap(runKernel('select', 'select', [x.handle, d, index]));
}

export function repeat(x: Tensor, reps: number[]): Tensor {
  tensorArg('repeat', 'x', x);
  intListArg('repeat', 'reps', reps, 0);
  if (reps.length < x.rank) throw new Error(`repeat: needs at least ${x.rank} repeat counts, got [${reps}]`);
  return wrap(runKernel('repeat', 'repeat', [x.handle, reps]));
}

export function flip(x: Tensor, dims: number[]): Tensor {
  tensorArg('flip', 'x', x);
  intListArg('flip', 'dims', dims);
  return wrap(runKernel('flip', 'flip', [x.handle, dims.map((d) => dimArg('flip', x, d))]));
}

export function roll(x: Tensor, shifts: number[], dims: number[]): Tensor {
  tensorArg('roll', 'x', x);
  intListArg('roll', 'shifts', shifts);
  intListArg('roll', 'dims', dims);
  if (shifts.length !== dims.length) throw new Error('roll: shifts and dims must have the same length');
  return wrap(runKernel('roll', 'roll', [x.handle, shifts, dims.map((d) => dimArg('roll', x, d))]));
}

export type PadMode = 'constant' | 'reflect' | 'replicate';

/**
 * Pads the last dims, PyTorch order: [left, right, top, bottom, ...].
 * 'reflect' and 'replicate' support 4-D inputs (N, C, H, W) with 4 pads.
 */
export function pad(x: Tensor, pads: number[], mode: PadMode = 'constant', value = 0): Tensor {
  tensorArg('pad', 'x', x);
  if (!Array.isArray(pads) || pads.length % 2 !== 0 || pads.length / 2 > x.rank) {
    throw new Error(`pad: pads must list an even number of values (at most 2 per dim of [${x.shape}]), got ${describe(pads)}`);
  }
  pads.forEach((p) => intArg('pad', 'pads', p));
  if (mode === 'constant') return wrap(runKernel('pad', 'pad', [x.handle, pads, value]));
  if (x.rank !== 4 || pads.length !== 4) throw new Error(`pad: mode '${mode}' needs a 4-D input and 4 pads`);
  if (mode === 'reflect') return wrap(runKernel('pad', 'reflectionPad2d', [x.handle, pads]));
  if (mode === 'replicate') return wrap(runKernel('pad', 'replicationPad2d', [x.handle, pads]));
  throw new TypeError(`pad: unknown mode ${describe(mode)}`);
}

export function indexSelect(x: Tensor, dim: number, index: Tensor): Tensor {
  tensorArg('indexSelect', 'x', x);
  tensorArg('indexSelect', 'index', index);
  if (index.dtype !== 'int64' && index.dtype !== 'int32') throw new TypeError(`indexSelect: 'index' must be an integer tensor, got ${index.dtype}`);
  if (index.rank !== 1) throw new Error(`indexSelect: 'index' must be 1-D, got shape [${index.shape}]`);
  return wrap(runKernel('indexSelect', 'indexSelect', [x.handle, dimArg('indexSelect', x, dim), index.handle]));
}

export function gather(x: Tensor, dim: number, index: Tensor): Tensor {
  tensorArg('gather', 'x', x);
  tensorArg('gather', 'index', index);
  if (index.dtype !== 'int64') throw new TypeError(`gather: 'index' must be int64, got ${index.dtype}`);
  if (index.rank !== x.rank) throw new Error(`gather: 'index' rank ${index.rank} differs from input rank ${x.rank}`);
  return wrap(runKernel('gather', 'gather', [x.handle, dimArg('gather', x, dim), index.handle]));
}

/** out = x with out[...index[i]...] = src[i] along dim. */
export function scatter(x: Tensor, dim: number, index: Tensor, src: Tensor | number): Tensor {
  tensorArg('scatter', 'x', x);
  tensorArg('scatter', 'index', index);
  if (index.dtype !== 'int64') throw new TypeError(`scatter: 'index' must be int64, got ${index.dtype}`);
  const d = dimArg('scatter', x, dim);
  if (typeof src === 'number') return wrap(runKernel('scatter', 'scatterValue', [x.handle, d, index.handle, src]));
  return wrap(runKernel('scatter', 'scatter', [x.handle, d, index.handle, tensorArg('scatter', 'src', src).handle]));
}

/** Advanced indexing x[i0, i1, ...] with index tensors (null = whole dim). */
export function index(x: Tensor, indices: (Tensor | null)[]): Tensor {
  tensorArg('index', 'x', x);
  if (!Array.isArray(indices)) throw new TypeError(`index: indices must be an array of tensors or nulls, got ${describe(indices)}`);
  if (indices.length > x.rank) throw new Error(`index: ${indices.length} indices for shape [${x.shape}]`);
  return wrap(runKernel('index', 'index', [x.handle, indices.map((t, i) => (t === null ? null : tensorArg('index', `indices[${i}]`, t).handle))]));
}

export function oneHot(labels: Tensor, numClasses: number): Tensor {
  tensorArg('oneHot', 'labels', labels);
  intArg('oneHot', 'numClasses', numClasses, 1);
  if (labels.dtype !== 'int64') throw new TypeError(`oneHot: labels must be int64, got ${labels.dtype}`);
  return wrap(runKernel('oneHot', 'oneHot', [labels.handle, numClasses]));
}

/** out = x with out[...index[i]...] += src[i] along dim (histograms, counts). */
export function scatterAdd(x: Tensor, dim: number, index: Tensor, src: Tensor): Tensor {
  tensorArg('scatterAdd', 'x', x);
  tensorArg('scatterAdd', 'index', index);
  tensorArg('scatterAdd', 'src', src);
  if (index.dtype !== 'int64') throw new TypeError(`scatterAdd: 'index' must be int64, got ${index.dtype}`);
  if (index.rank !== x.rank || src.rank !== x.rank)
    throw new Error(`scatterAdd: 'index' [${index.shape}] and 'src' [${src.shape}] must have the rank of x [${x.shape}]`);
  if (src.dtype !== x.dtype) throw new TypeError(`scatterAdd: 'src' is ${src.dtype} but x is ${x.dtype}`);
  return wrap(runKernel('scatterAdd', 'scatterAdd', [x.handle, dimArg('scatterAdd', x, dim), index.handle, src.handle]));
}

/** out = x with the slices at `index` along dim replaced by the slices of src (index_copy). */
export function indexCopy(x: Tensor, dim: number, index: Tensor, src: Tensor): Tensor {
  tensorArg('indexCopy', 'x', x);
  tensorArg('indexCopy', 'index', index);
  tensorArg('indexCopy', 'src', src);
  if (index.dtype !== 'int64') throw new TypeError(`indexCopy: 'index' must be int64, got ${index.dtype}`);
  if (index.rank !== 1) throw new Error(`indexCopy: 'index' must be 1-D, got shape [${index.shape}]`);
  const d = dimArg('indexCopy', x, dim);
  if (src.rank !== x.rank || src.dim(d) !== index.dim(0) || src.shape.some((v, i) => i !== d && v !== x.dim(i))) {
    throw new Error(`indexCopy: src [${src.shape}] does not fit x [${x.shape}] with ${index.dim(0)} indices along dim ${d}`);
  }
  if (src.dtype !== x.dtype) throw new TypeError(`indexCopy: 'src' is ${src.dtype} but x is ${x.dtype}`);
  return wrap(runKernel('indexCopy', 'indexCopy', [x.handle, d, index.handle, src.handle]));
}
