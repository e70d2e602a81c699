// Tensor ops against hand-computed values: reductions, shapes, joining, padding, slicing,
// indexing, selection, softmax, comparisons, pooling, dropout and matmul.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { withLibtorchOps } from './helpers/env.js';

const approx = (a: number[], b: number[], tol = 1e-5) => assert.ok(a.length === b.length && a.every((v, i) => Math.abs(v - b[i]!) <= tol), `[${a}] != [${b}]`);
/** [[1,2,3],[4,5,6]] */
const m23 = () => t.tensor([1, 2, 3, 4, 5, 6], [2, 3]);

test('reductions', () => {
  t.tidy(() => {
    const x = m23();
    assert.equal(t.sum(x).item(), 21);
    assert.deepEqual(t.sum(x, 0).toArray(), [5, 7, 9]);
    assert.deepEqual(t.sum(x, 1, true).shape, [2, 1]);
    assert.deepEqual(t.sum(x, -1).toArray(), [6, 15]);
    assert.equal(t.mean(x).item(), 3.5);
    assert.deepEqual(t.mean(x, [0, 1]).toArray(), [3.5]);
    assert.deepEqual(t.mean(x, 1).toArray(), [2, 5]);
    assert.equal(t.max(x).item(), 6);
    assert.equal(t.min(x).item(), 1);
    const [v, i] = t.maxDim(t.tensor([3, 9, 2, 7, 1, 8], [2, 3]), 1);
    assert.deepEqual(v.toArray(), [9, 8]);
    assert.deepEqual(i.toArray(), [1, 2]);
    assert.equal(i.dtype, 'int64');
    assert.deepEqual(t.argmax(t.tensor([3, 9, 2, 7, 1, 8], [2, 3]), 0).toArray(), [1, 0, 1]);
    assert.deepEqual(t.argmin(t.tensor([3, 9, 2, 7, 1, 8], [2, 3]), 1).toArray(), [2, 1]);
    approx([t.norm(t.tensor([3, 4], [2])).item()], [5]);
    approx([t.norm(t.tensor([3, -4], [2]), 1).item()], [7]);
    // unbiased variance of [1,2,3,4] is 5/3, biased 5/4
    approx(t.variance(t.tensor([1, 2, 3, 4], [4]), 0).toArray(), [5 / 3]);
    approx(t.variance(t.tensor([1, 2, 3, 4], [4]), 0, 0).toArray(), [5 / 4]);
    const [tv, ti] = t.topk(t.tensor([5, 1, 9, 3, 7], [5]), 2);
    assert.deepEqual(tv.toArray(), [9, 7]);
    assert.deepEqual(ti.toArray(), [2, 4]);
    assert.equal(t.all(t.gt(x, 0)).item(), 1);
    assert.equal(t.any(t.gt(x, 5)).item(), 1);
    assert.equal(t.any(t.gt(x, 6)).item(), 0);
    assert.equal(t.sum(t.tensor(new Uint8Array([200, 100]))).item(), 300); // integer sums widen to int64
    assert.throws(() => t.mean(t.arange(3)), /mean: needs a floating tensor/);
  });
});

test('shape ops: reshape, view, permute, transpose, flatten, squeeze, unsqueeze, expand, repeat, flip, roll', () => {
  t.tidy(() => {
    const x = m23();
    assert.deepEqual(x.reshape([3, 2]).toArray(), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(x.reshape([-1]).shape, [6]);
    assert.deepEqual(x.view([3, -1]).shape, [3, 2]);
    const p = x.permute([1, 0]);
    assert.deepEqual(p.shape, [3, 2]);
    assert.deepEqual(p.toArray(), [1, 4, 2, 5, 3, 6]);
    assert.deepEqual(t.transpose(x, 0, 1).toArray(), [1, 4, 2, 5, 3, 6]);
    assert.equal(t.isContiguous(p), false);
    assert.throws(() => p.view([6]), /view/); // a view of a transposed tensor needs reshape
    assert.deepEqual(p.reshape([6]).toArray(), [1, 4, 2, 5, 3, 6]);
    const y = t.arange(24).reshape([2, 3, 4]);
    assert.deepEqual(t.flatten(y, 1).shape, [2, 12]);
    assert.deepEqual(y.flatten().shape, [24]);
    assert.deepEqual(t.squeeze(t.zeros([2, 1, 3]), 1).shape, [2, 3]);
    assert.deepEqual(t.unsqueeze(x, 0).shape, [1, 2, 3]);
    assert.deepEqual(t.unsqueeze(x, -1).shape, [2, 3, 1]);
    assert.deepEqual(t.expand(t.tensor([1, 2], [2, 1]), [2, 3]).toArray(), [1, 1, 1, 2, 2, 2]);
    assert.deepEqual(t.repeat(t.tensor([1, 2], [2]), [2]).toArray(), [1, 2, 1, 2]);
    assert.deepEqual(t.repeat(t.tensor([1, 2], [1, 2]), [2, 1]).toArray(), [1, 2, 1, 2]);
    assert.deepEqual(t.flip(x, [1]).toArray(), [3, 2, 1, 6, 5, 4]);
    assert.deepEqual(t.flip(x, [0, 1]).toArray(), [6, 5, 4, 3, 2, 1]);
    assert.deepEqual(t.roll(t.arange(5), [2], [0]).toArray(), [3, 4, 0, 1, 2]);
    assert.throws(() => x.reshape([4, 2]), /reshape: cannot reshape \[2,3\] \(6 elements\) to \[4,2\]/);
  });
});

test('cat and stack', () => {
  t.tidy(() => {
    const a = t.tensor([1, 2], [1, 2]),
      b = t.tensor([3, 4, 5, 6], [2, 2]);
    const c0 = t.cat([a, b], 0);
    assert.deepEqual(c0.shape, [3, 2]);
    assert.deepEqual(c0.toArray(), [1, 2, 3, 4, 5, 6]);
    const c1 = t.cat([b, b], 1);
    assert.deepEqual(c1.shape, [2, 4]);
    assert.deepEqual(c1.toArray(), [3, 4, 3, 4, 5, 6, 5, 6]);
    const s = t.stack([t.tensor([1, 2], [2]), t.tensor([3, 4], [2])], 1);
    assert.deepEqual(s.shape, [2, 2]);
    assert.deepEqual(s.toArray(), [1, 3, 2, 4]);
    assert.deepEqual(t.stack([a, a], 0).shape, [2, 1, 2]);
    assert.throws(() => t.cat([a, b], 1), /cat: tensors\[1\] has shape \[2,2\]/);
    assert.throws(() => t.stack([a, b]), /stack/);
  });
});

test('pad: constant, reflect, replicate', () => {
  t.tidy(() => {
    const x = t.tensor([1, 2, 3], [1, 1, 1, 3]);
    assert.deepEqual(t.pad(x, [1, 2]).toArray(), [0, 1, 2, 3, 0, 0]);
    assert.deepEqual(t.pad(x, [1, 0], 'constant', -1).toArray(), [-1, 1, 2, 3]);
    assert.deepEqual(t.pad(x, [0, 0, 1, 0]).shape, [1, 1, 2, 3]);
    assert.deepEqual(t.pad(x, [0, 0, 1, 0]).toArray(), [0, 0, 0, 1, 2, 3]);
    assert.deepEqual(t.pad(x, [2, 1, 0, 0], 'reflect').toArray(), [3, 2, 1, 2, 3, 2]);
    assert.deepEqual(t.pad(x, [2, 1, 0, 0], 'replicate').toArray(), [1, 1, 1, 2, 3, 3]);
    const sq = t.tensor([1, 2, 3, 4], [1, 1, 2, 2]);
    // reflect 1 on each side of [[1,2],[3,4]]
    assert.deepEqual(t.pad(sq, [1, 1, 1, 1], 'reflect').toArray(), [4, 3, 4, 3, 2, 1, 2, 1, 4, 3, 4, 3, 2, 1, 2, 1]);
  });
});

test('slicing and selection', () => {
  t.tidy(() => {
    const x = t.arange(10);
    assert.deepEqual(t.slice(x, 0, 2, 8, 3).toArray(), [2, 5]);
    assert.deepEqual(t.slice(x, 0, -3, 10).toArray(), [7, 8, 9]);
    const m = t.arange(12).reshape([3, 4]);
    assert.deepEqual(t.slice(m, 1, 1, 3).toArray(), [1, 2, 5, 6, 9, 10]);
    assert.deepEqual(t.select(m, 0, -1).toArray(), [8, 9, 10, 11]);
    assert.deepEqual(t.select(m, 1, 2).toArray(), [2, 6, 10]);
    // a slice is a view: writing through it changes the base
    const base = t.zeros([4]);
    t.fill_(t.slice(base, 0, 1, 3), 5);
    assert.deepEqual(base.toArray(), [0, 5, 5, 0]);
    assert.throws(() => t.select(m, 0, 3), /select: index 3 out of range/);
  });
});

test('gather, indexSelect, scatter, index, oneHot, maskedFill', () => {
  t.tidy(() => {
    const x = t.tensor([10, 11, 12, 20, 21, 22], [2, 3]);
    const idx = t.tensor(BigInt64Array.from([2n, 0n, 1n, 1n]), [2, 2]);
    assert.deepEqual(t.gather(x, 1, idx).toArray(), [12, 10, 21, 21]);
    assert.deepEqual(t.indexSelect(x, 1, t.tensor([2, 0], [2], { dtype: 'int64' })).toArray(), [12, 10, 22, 20]);
    const sc = t.scatter(t.zeros([2, 3]), 1, t.tensor([1, 2], [2, 1], { dtype: 'int64' }), t.tensor([7, 8], [2, 1]));
    assert.deepEqual(sc.toArray(), [0, 7, 0, 0, 0, 8]);
    assert.deepEqual(t.scatter(t.zeros([3]), 0, t.tensor([0, 2], [2], { dtype: 'int64' }), 1).toArray(), [1, 0, 1]);
    assert.deepEqual(t.index(x, [t.tensor([1, 0, 1], [3], { dtype: 'int64' })]).toArray(), [20, 21, 22, 10, 11, 12, 20, 21, 22]);
    assert.deepEqual(t.index(x, [null, t.tensor([2], [1], { dtype: 'int64' })]).toArray(), [12, 22]);
    const oh = t.oneHot(t.tensor([2, 0], [2], { dtype: 'int64' }), 3);
    assert.deepEqual(oh.shape, [2, 3]);
    assert.deepEqual(oh.toArray(), [0, 0, 1, 1, 0, 0]);
    assert.deepEqual(t.maskedFill(t.tensor([1, 2, 3], [3]), t.tensor([1, 0, 1], [3], { dtype: 'bool' }), -1).toArray(), [-1, 2, -1]);
  });
});

test('where, clamp, elementwise math and comparisons', () => {
  t.tidy(() => {
    const a = t.tensor([1, -2, 3, -4], [4]);
    const cond = t.gt(a, 0);
    assert.equal(cond.dtype, 'bool');
    assert.deepEqual(cond.toArray(), [1, 0, 1, 0]);
    assert.deepEqual(t.where(cond, a, t.tensor([10, 20, 30, 40], [4])).toArray(), [1, 20, 3, 40]);
    assert.deepEqual(t.where(cond, a, 0).toArray(), [1, 0, 3, 0]);
    assert.deepEqual(t.clamp(a, -1, 2).toArray(), [1, -1, 2, -1]);
    assert.deepEqual(t.clamp(a, null, 0).toArray(), [0, -2, 0, -4]);
    assert.deepEqual(t.eq(a, 3).toArray(), [0, 0, 1, 0]);
    assert.deepEqual(t.ne(a, t.tensor([1, 2, 3, 4], [4])).toArray(), [0, 1, 0, 1]);
    assert.deepEqual(t.lt(a, -2).toArray(), [0, 0, 0, 1]);
    assert.deepEqual(t.le(a, -2).toArray(), [0, 1, 0, 1]);
    assert.deepEqual(t.ge(a, 3).toArray(), [0, 0, 1, 0]);
    assert.deepEqual(t.logicalAnd(cond, t.lt(a, 2)).toArray(), [1, 0, 0, 0]);
    assert.deepEqual(t.logicalNot(cond).toArray(), [0, 1, 0, 1]);
    // broadcasting: [2,1] op [3] -> [2,3]
    assert.deepEqual(t.add(t.tensor([10, 20], [2, 1]), t.tensor([1, 2, 3], [3])).toArray(), [11, 12, 13, 21, 22, 23]);
    assert.deepEqual(t.sub(a, 1).toArray(), [0, -3, 2, -5]);
    assert.deepEqual(t.div(a, 2).toArray(), [0.5, -1, 1.5, -2]);
    assert.deepEqual(t.add(a, t.ones([4]), 3).toArray(), [4, 1, 6, -1]);
    assert.deepEqual(t.abs(a).toArray(), [1, 2, 3, 4]);
    assert.deepEqual(t.relu(a).toArray(), [1, 0, 3, 0]);
    assert.deepEqual(t.sign(a).toArray(), [1, -1, 1, -1]);
    assert.deepEqual(t.pow(a, 2).toArray(), [1, 4, 9, 16]);
    assert.deepEqual(t.maximum(a, t.zeros([4])).toArray(), [1, 0, 3, 0]);
    assert.deepEqual(t.minimum(a, t.zeros([4])).toArray(), [0, -2, 0, -4]);
    assert.deepEqual(t.floor(t.tensor([1.5, -1.5], [2])).toArray(), [1, -2]);
    assert.deepEqual(t.round(t.tensor([2.5, 3.5, -0.4], [3])).toArray(), [2, 4, -0]); // half to even
    approx(t.exp(t.tensor([0, 1], [2])).toArray(), [1, Math.E]);
    approx(t.log(t.tensor([1, Math.E], [2])).toArray(), [0, 1]);
    approx(t.sqrt(t.tensor([4, 2], [2])).toArray(), [2, Math.SQRT2]);
    approx(t.rsqrt(t.tensor([4], [1])).toArray(), [0.5]);
    approx(t.sigmoid(t.tensor([0, 2], [2])).toArray(), [0.5, 1 / (1 + Math.exp(-2))]);
    approx(t.tanh(t.tensor([0.5], [1])).toArray(), [Math.tanh(0.5)]);
    assert.deepEqual(t.isfinite(t.tensor([1, Infinity, NaN, -Infinity], [4])).toArray(), [1, 0, 0, 0]);
    // gelu(x) = x * Phi(x); Phi(1) = 0.841344746
    approx(t.gelu(t.tensor([1, 0, -1], [3])).toArray(), [0.841344746, 0, -0.158655254]);
    assert.throws(() => t.add(t.zeros([2]), t.zeros([3])), /add: shapes \[2\] and \[3\] cannot be broadcast/);
  });
});

test('softmax and logSoftmax', () => {
  t.tidy(() => {
    const x = t.tensor([1, 2, 3, 1, 1, 1], [2, 3]);
    const e = [Math.exp(1), Math.exp(2), Math.exp(3)];
    const z = e[0]! + e[1]! + e[2]!;
    approx(t.softmax(x, 1).toArray(), [e[0]! / z, e[1]! / z, e[2]! / z, 1 / 3, 1 / 3, 1 / 3]);
    approx(t.logSoftmax(x, -1).toArray(), [1 - Math.log(z), 2 - Math.log(z), 3 - Math.log(z), -Math.log(3), -Math.log(3), -Math.log(3)]);
    // along dim 0: column [1,1] -> 0.5 each; [2,1] -> e/(e+1), 1/(e+1)
    approx(t.softmax(x, 0).toArray().slice(0, 2), [0.5, Math.E / (Math.E + 1)]);
    // large logits stay finite
    approx(t.softmax(t.tensor([1000, 1000], [2])).toArray(), [0.5, 0.5]);
  });
});

test('adaptive and fixed average pooling use PyTorch bin edges', () => {
  t.tidy(() => {
    const x = t.arange(0, 5, 1, { dtype: 'float32' }).reshape([1, 1, 1, 5]); // 0 1 2 3 4
    // 5 -> 3 bins: [0,2) [1,4) [3,5) => 0.5, 2, 3.5
    approx(t.adaptiveAvgPool2d(x, [1, 3]).toArray(), [0.5, 2, 3.5]);
    const img = t.arange(16, undefined, 1, { dtype: 'float32' }).reshape([1, 1, 4, 4]);
    approx(t.adaptiveAvgPool2d(img, 1).toArray(), [7.5]);
    approx(t.adaptiveAvgPool2d(img, 2).toArray(), [2.5, 4.5, 10.5, 12.5]);
    assert.deepEqual(t.adaptiveAvgPool2d(t.zeros([2, 3, 5, 5])).shape, [2, 3, 1, 1]);
    approx(t.avgPool2d(img, 2).toArray(), [2.5, 4.5, 10.5, 12.5]);
    approx(t.avgPool2d(img, 2, 1).toArray().slice(0, 3), [2.5, 3.5, 4.5]);
  });
});

test("global average pooling (one bin) gives libtorch's adaptive_avg_pool2d numbers bit for bit, forward and gradient", () => {
  const live = t.liveTensors();
  const cases: { shape: number[]; channelsLast?: boolean }[] = [
    { shape: [2, 3, 5, 7] },
    { shape: [4, 16, 8, 8], channelsLast: true },
    { shape: [3, 33, 9, 9] },
    { shape: [1, 1, 1, 1] },
  ];
  for (const { shape, channelsLast } of cases) {
    const gen = new t.Generator(5);
    const x0 = t.randn(shape, { generator: gen });
    const x = channelsLast ? t.contiguous(x0, 'channels_last') : x0;
    const up = t.randn([shape[0]!, shape[1]!, 1, 1], { generator: gen });
    // The output, then the input's gradient under an upstream gradient, both as float arrays.
    const run = () => {
      x.requiresGrad = true;
      try {
        return t.tidy(() => {
          const y = t.adaptiveAvgPool2d(x, 1);
          t.sum(t.mul(y, up)).backward();
          return [y.toFloat32Array(), x.grad!.toFloat32Array()];
        });
      } finally {
        x.grad = null;
        x.requiresGrad = false;
      }
    };
    assert.deepEqual(run(), withLibtorchOps(run), `${shape}${channelsLast ? ' channels-last' : ''}`);
    t.dispose([x0, x, up]);
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('dropout: zero fraction near p, survivors scaled by 1/(1-p), identity in eval', () => {
  t.tidy(() => {
    t.manualSeed(11);
    const n = 100000,
      p = 0.3;
    const y = t.dropout(t.ones([n]), p, true).toArray();
    const zeros = y.filter((v) => v === 0).length;
    assert.ok(Math.abs(zeros / n - p) < 0.01, `zero fraction ${zeros / n}`);
    assert.ok(y.every((v) => v === 0 || Math.abs(v - 1 / (1 - p)) < 1e-6));
    // the mean is preserved in expectation
    assert.ok(Math.abs(y.reduce((a, b) => a + b, 0) / n - 1) < 0.02);
    const x = t.tensor([1, 2, 3], [3]);
    assert.deepEqual(t.dropout(x, 0.9, false).toArray(), [1, 2, 3]);
    assert.ok(
      t
        .dropout(t.ones([100]), 1, true)
        .toArray()
        .every((v) => v === 0),
    );
    assert.deepEqual(t.dropout(x, 0, true).toArray(), [1, 2, 3]);
  });
});

test('matmul: matrix, batched, vector', () => {
  t.tidy(() => {
    const a = m23(); // [[1,2,3],[4,5,6]]
    const b = t.tensor([7, 8, 9, 10, 11, 12], [3, 2]); // [[7,8],[9,10],[11,12]]
    const c = t.matmul(a, b);
    assert.deepEqual(c.shape, [2, 2]);
    assert.deepEqual(c.toArray(), [58, 64, 139, 154]);
    assert.deepEqual(t.matmul(a, t.tensor([1, 0, -1], [3])).toArray(), [-2, -2]);
    const batched = t.matmul(t.stack([a, a.mul(2)]), b);
    assert.deepEqual(batched.shape, [2, 2, 2]);
    assert.deepEqual(batched.toArray(), [58, 64, 139, 154, 116, 128, 278, 308]);
    // linear is x W^T + b
    assert.deepEqual(t.linear(a, t.tensor([1, 1, 1, 0, 0, 1], [2, 3]), t.tensor([0.5, -1], [2])).toArray(), [6.5, 2, 15.5, 5]);
    assert.throws(() => t.matmul(a, a), /matmul: shapes \[2,3\] and \[2,3\] are not aligned/);
  });
});
