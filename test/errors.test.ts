// Bad input must raise an Error that names the op, never crash the process or return quietly.
// A seeded fuzzer fires several hundred malformed calls at the op fronts and at the raw addon.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { native, type Handle, type KernelArg } from '../src/tensor/native.js';

/** mulberry32: a small seeded PRNG so a failing call can be reproduced. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let r = Math.imul(a ^ (a >>> 15), 1 | a);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  return { next, pick, int };
}

const CUDA = t.cudaAvailable();
/** Far beyond any machine's memory and beyond the 47-bit address space, so allocation fails cleanly. */
const HUGE_SHAPES = [
  [1e8, 1e8],
  [2 ** 20, 2 ** 20, 2 ** 16],
  [2 ** 40, 2 ** 40, 2 ** 40],
  [2 ** 53, 2 ** 53],
];

interface Outcome {
  op: string;
  category: string;
  detail: string;
}

/** Runs fn, which must throw an Error naming `op`; returns a description of what went wrong, if anything. */
function expectOpError(op: string, fn: () => unknown): string | null {
  try {
    t.tidy(() => {
      fn();
    }); // frees whatever the call built before failing
  } catch (e) {
    if (!(e instanceof Error)) return `threw a non-Error ${String(e)}`;
    if (!e.message.includes(op)) return `message does not name '${op}': ${e.message.slice(0, 200)}`;
    return null;
  }
  return 'did not throw';
}

test('fuzz: several hundred malformed calls at the op fronts all raise Errors naming the op', () => {
  const r = rng(0xc0ffee);
  const X = t.randn([2, 3, 6, 6]);
  const W = t.randn([4, 3, 3, 3]);
  const M = t.randn([3, 4]);
  const L = t.tensor([0, 2, 1], [3], { dtype: 'int64' });
  const gone = t.zeros([2]);
  gone.dispose();
  const badTensors: unknown[] = ['x', 42, {}, [], true, NaN, null, undefined, gone, new Float32Array(2), () => 1];

  type Call = [op: string, fn: () => unknown];
  const wrongType = (b: unknown): Call[] => [
    ['conv2d', () => t.conv2d(b as Tensor, W)],
    ['conv2d', () => t.conv2d(X, b as Tensor)],
    ['batchNorm', () => t.batchNorm(b as Tensor, { training: true })],
    ['linear', () => t.linear(b as Tensor, M)],
    ['linear', () => t.linear(M, b as Tensor)],
    ['matmul', () => t.matmul(M, b as Tensor)],
    ['crossEntropy', () => t.crossEntropy(b as Tensor, L)],
    ['crossEntropy', () => t.crossEntropy(M, b as Tensor)],
    ['softmax', () => t.softmax(b as Tensor)],
    ['logSoftmax', () => t.logSoftmax(b as Tensor)],
    ['gelu', () => t.gelu(b as Tensor)],
    ['sum', () => t.sum(b as Tensor)],
    ['mean', () => t.mean(b as Tensor)],
    ['reshape', () => t.reshape(b as Tensor, [12])],
    ['cat', () => t.cat([M, b as Tensor])],
    ['stack', () => t.stack([b as Tensor, M])],
    ['where', () => t.where(b as Tensor, M, M)],
    ['gather', () => t.gather(M, 1, b as Tensor)],
    ['to', () => t.to(b as Tensor, 'float16')],
    ['clone', () => t.clone(b as Tensor)],
    ['copy_', () => t.copy_(M, b as Tensor)],
    ['dropout', () => t.dropout(b as Tensor, 0.5, true)],
    ['adaptiveAvgPool2d', () => t.adaptiveAvgPool2d(b as Tensor, 1)],
    ['pad', () => t.pad(b as Tensor, [1, 1])],
    ['slice', () => t.slice(b as Tensor, 0, 0, 1)],
    ['select', () => t.select(b as Tensor, 0, 0)],
    ['permute', () => t.permute(b as Tensor, [1, 0])],
    ['clamp', () => t.clamp(b as Tensor, 0, 1)],
    ['maskedFill', () => t.maskedFill(M, b as Tensor, 0)],
    ['oneHot', () => t.oneHot(b as Tensor, 3)],
    ['exp', () => t.exp(b as Tensor)],
    ['relu', () => t.relu(b as Tensor)],
    ['norm', () => t.norm(b as Tensor)],
    ['argmax', () => t.argmax(b as Tensor, 0)],
    ['topk', () => t.topk(b as Tensor, 1)],
    ['indexSelect', () => t.indexSelect(M, 0, b as Tensor)],
    ['isContiguous', () => t.isContiguous(b as Tensor)],
    ['contiguous', () => t.contiguous(b as Tensor)],
    ['zerosLike', () => t.zerosLike(b as Tensor)],
    ['add', () => t.add(b as Tensor, 1)],
    ['mul_', () => t.mul_(b as Tensor, 2)],
    ['addcmul_', () => t.addcmul_(M, b as Tensor, M)],
  ];
  // Slots where null/undefined (and sometimes numbers or {}) are legal get their own pools of bad values.
  const f32 = new Float32Array(2);
  const fn1 = () => 1;
  const notTensorOrNumber = ['x', true, [], gone, f32, fn1, {}];
  const notOptions = ['x', true, [], gone, f32, fn1, 42, null];
  const optionalSlots: [pool: unknown[], call: (b: unknown) => Call][] = [
    [[...notTensorOrNumber, 42], (b) => ['conv2d', () => t.conv2d(X, W, b as Tensor)]],
    [[...notTensorOrNumber, 42], (b) => ['linear', () => t.linear(M, M, b as Tensor)]],
    [[...notTensorOrNumber, 42], (b) => ['batchNorm', () => t.batchNorm(X, { training: true, weight: b as Tensor })]],
    [notTensorOrNumber, (b) => ['add', () => t.add(M, b as Tensor)]],
    [notTensorOrNumber, (b) => ['where', () => t.where(t.gt(M, 0), M, b as Tensor)]],
    [notOptions, (b) => ['conv2d', () => t.conv2d(X, W, null, b as t.Conv2dOptions)]],
    [[...notOptions, {}, { training: 'yes' }], (b) => ['batchNorm', () => t.batchNorm(X, b as t.BatchNormOptions)]],
    [notOptions, (b) => ['crossEntropy', () => t.crossEntropy(M, L, b as t.CrossEntropyOptions)]],
    [notOptions, (b) => ['zeros', () => t.zeros([2], b as t.CreateOptions)]],
    [notOptions, (b) => ['to', () => t.to(M, b as t.ToOptions)]],
    [[...notTensorOrNumber, 42], (b) => ['randn', () => t.randn([2], { generator: b as t.Generator })]],
    [[...notTensorOrNumber, 42], (b) => ['normal_', () => t.normal_(t.zeros([2]), 0, 1, b as t.Generator)]],
    [['x', true, gone, 42, {}, fn1, null], (b) => ['index', () => t.index(M, b as Tensor[])]],
    [['x', true, gone, 42, {}, fn1, null, ['a'], [1, 'b']], (b) => ['tensor', () => t.tensor(b as number[])]],
  ];
  const n = () => r.int(1, 5);
  const wrongShape = (): Call[] => [
    ['conv2d', () => t.conv2d(t.zeros([1, n() + 3, 5, 5]), W)],
    ['conv2d', () => t.conv2d(t.zeros([3, 6, 6]), W)],
    ['conv2d', () => t.conv2d(t.zeros([1, 3, 2, 2]), t.zeros([2, 3, 5, 5]))],
    ['conv2d', () => t.conv2d(X, W, t.zeros([n() + 4]))],
    ['conv2d', () => t.conv2d(X, t.zeros([4, 3, 3, 3]), null, { groups: 2 })],
    ['linear', () => t.linear(t.zeros([2, n() + 4]), M)],
    ['linear', () => t.linear(t.zeros([2, 4]), M, t.zeros([n() + 3]))],
    ['matmul', () => t.matmul(M, t.zeros([n() + 4, 2]))],
    ['add', () => t.add(t.zeros([n() + 1, 3]), t.zeros([n() + 6, 4]))],
    ['cat', () => t.cat([M, t.zeros([2, n() + 4])])],
    ['stack', () => t.stack([M, t.zeros([n() + 3, 4])])],
    ['reshape', () => t.reshape(M, [n() + 12])],
    ['view', () => t.view(M, [5, -1])],
    ['crossEntropy', () => t.crossEntropy(M, t.zeros([n() + 3], { dtype: 'int64' }))],
    ['crossEntropy', () => t.crossEntropy(M, t.zeros([3, n() + 4]))],
    ['crossEntropy', () => t.crossEntropy(t.zeros([3]), L)],
    ['batchNorm', () => t.batchNorm(X, { training: true, weight: t.ones([n() + 3]) })],
    ['batchNorm', () => t.batchNorm(t.zeros([1, 3]), { training: true })],
    ['batchNorm', () => t.batchNorm(X, { training: false })],
    ['gather', () => t.gather(M, 1, t.zeros([3], { dtype: 'int64' }))],
    ['expand', () => t.expand(M, [n() + 4, 5])],
    ['adaptiveAvgPool2d', () => t.adaptiveAvgPool2d(M, 1)],
    ['where', () => t.where(t.zeros([n() + 3], { dtype: 'bool' }), M, M)],
    ['maskedFill', () => t.maskedFill(M, t.zeros([n() + 4], { dtype: 'bool' }), 1)],
    ['copy_', () => t.copy_(M, t.zeros([n() + 4]))],
    ['indexSelect', () => t.indexSelect(M, 0, t.zeros([1, 1], { dtype: 'int64' }))],
    ['permute', () => t.permute(M, [0])],
    ['avgPool2d', () => t.avgPool2d(X, 9)],
    ['repeat', () => t.repeat(M, [2])],
    ['pad', () => t.pad(M, [1, 1, 1, 1, 1, 1])],
    ['gather', () => t.gather(M, 1, t.tensor([n() + 4], [1, 1], { dtype: 'int64' }))],
    ['crossEntropy', () => t.crossEntropy(M, t.tensor([0, 1, n() + 4], [3], { dtype: 'int64' }))],
    ['oneHot', () => t.oneHot(t.tensor([n() + 3], [1], { dtype: 'int64' }), 3)],
    ['index', () => t.index(M, [t.tensor([n() + 3], [1], { dtype: 'int64' })])],
    ['topk', () => t.topk(M, n() + 4)],
  ];
  const wrongDtype = (): Call[] => [
    ['conv2d', () => t.conv2d(t.zeros([2, 3, 6, 6], { dtype: 'int64' }), W)],
    ['conv2d', () => t.conv2d(X, t.ones([4, 3, 3, 3], { dtype: r.pick(['int64', 'float64', 'uint8'] as const) }))],
    ['crossEntropy', () => t.crossEntropy(M, t.tensor([0, 1, 2], [3], { dtype: 'int32' }))],
    ['crossEntropy', () => t.crossEntropy(M, t.tensor([0, 1, 2], [3]))],
    ['crossEntropy', () => t.crossEntropy(t.zeros([3, 4], { dtype: 'int64' }), L)],
    ['gather', () => t.gather(M, 1, t.zeros([3, 1]))],
    ['where', () => t.where(M, M, M)],
    ['softmax', () => t.softmax(L)],
    ['mean', () => t.mean(L)],
    ['batchNorm', () => t.batchNorm(t.zeros([2, 3], { dtype: 'int64' }), { training: true })],
    ['indexSelect', () => t.indexSelect(M, 0, t.zeros([1]))],
    ['oneHot', () => t.oneHot(t.zeros([2]), 3)],
    ['maskedFill', () => t.maskedFill(M, t.zeros([3, 4]), 1)],
    ['logSoftmax', () => t.logSoftmax(t.zeros([2], { dtype: 'uint8' }))],
    ['matmul', () => t.matmul(t.ones([3, 4], { dtype: 'int64' }), t.randn([4, 2]))],
    ['linear', () => t.linear(t.ones([3, 4], { dtype: 'int64' }), M)],
    ['scatter', () => t.scatter(M, 0, t.zeros([1, 1]), 1)],
    ['add_', () => t.add_(t.zeros([2], { dtype: 'int64' }), t.randn([2]))],
  ];
  const badDims: unknown[] = [2, 5, -3, -9, 1.5, NaN, Infinity, '0', null, {}];
  const dimCalls = (d: unknown): Call[] => [
    ['sum', () => t.sum(M, d as number)],
    ['mean', () => t.mean(M, d as number)],
    ['softmax', () => t.softmax(M, d as number)],
    ['logSoftmax', () => t.logSoftmax(M, d as number)],
    ['argmax', () => t.argmax(M, d as number)],
    ['argmin', () => t.argmin(M, d as number)],
    ['maxDim', () => t.maxDim(M, d as number)],
    ['squeeze', () => t.squeeze(M, d as number)],
    ['select', () => t.select(M, d as number, 0)],
    ['slice', () => t.slice(M, d as number, 0, 1)],
    ['transpose', () => t.transpose(M, 0, d as number)],
    ['flatten', () => t.flatten(M, d as number)],
    ['cat', () => t.cat([M, M], d as number)],
    ['gather', () => t.gather(M, d as number, t.zeros([3, 4], { dtype: 'int64' }))],
    ['indexSelect', () => t.indexSelect(M, d as number, t.zeros([1], { dtype: 'int64' }))],
    ['topk', () => t.topk(M, 1, d as number)],
    ['variance', () => t.variance(M, d as number)],
    ['flip', () => t.flip(M, [d as number])],
    ['roll', () => t.roll(M, [1], [d as number])],
    ['permute', () => t.permute(M, [0, d as number])],
    ['sum', () => t.sum(M, [0, d as number])],
  ];
  // stack and unsqueeze accept one more dim than the rank
  const dimCallsPlusOne = (d: unknown): Call[] => [
    ['stack', () => t.stack([M, M], d as number)],
    ['unsqueeze', () => t.unsqueeze(M, d as number)],
  ];
  const badDimsPlusOne: unknown[] = [3, 7, -4, 0.5, NaN, '1', null];
  const badDtypes: unknown[] = ['float99', 'float', 'int', 'Float32', '', 'double', 'complex64', 5, true];
  const dtypeCalls = (d: unknown): Call[] => {
    const o = { dtype: d as t.DType };
    return [
      ['zeros', () => t.zeros([2], o)],
      ['ones', () => t.ones([2], o)],
      ['full', () => t.full([2], 1, o)],
      ['randn', () => t.randn([2], o)],
      ['rand', () => t.rand([2], o)],
      ['randint', () => t.randint(0, 3, [2], o)],
      ['arange', () => t.arange(0, 3, 1, o)],
      ['tensor', () => t.tensor([1, 2], [2], o)],
      ['tensor', () => t.tensor(new Float32Array(2), [2], o)],
      ['to', () => t.to(M, o)],
      ['to', () => t.to(M, d as t.DType)],
    ];
  };
  const badDevices = CUDA ? ['gpu', 'cpu:0', 'cuda:x', 'CUDA', ''] : ['cuda:0', 'cuda', 'cuda:1', 'gpu', 'cpu:0', 'cuda:x', 'CUDA', ''];
  const deviceCalls = (d: string): Call[] => [
    ['zeros', () => t.zeros([2], { device: d })],
    ['ones', () => t.ones([2], { device: d })],
    ['full', () => t.full([2], 1, { device: d })],
    ['randn', () => t.randn([2], { device: d })],
    ['rand', () => t.rand([2], { device: d, generator: new t.Generator(1) })],
    ['randint', () => t.randint(0, 2, [2], { device: d })],
    ['arange', () => t.arange(0, 3, 1, { device: d })],
    ['randperm', () => t.randperm(3, { device: d })],
    ['tensor', () => t.tensor([1, 2], [2], { device: d })],
    ['to', () => t.to(M, d)],
    ['to', () => t.to(M, { device: d })],
    ['Generator', () => new t.Generator(1, d)],
  ];
  const nanCalls = (): Call[] => [
    ['arange', () => t.arange(NaN)],
    ['arange', () => t.arange(0, NaN)],
    ['full', () => t.full([2], NaN)],
    ['dropout', () => t.dropout(M, NaN, true)],
    ['conv2d', () => t.conv2d(X, W, null, { stride: NaN })],
    ['conv2d', () => t.conv2d(X, W, null, { padding: NaN })],
    ['conv2d', () => t.conv2d(X, W, null, { dilation: [1, NaN] })],
    ['conv2d', () => t.conv2d(X, W, null, { groups: NaN })],
    ['pad', () => t.pad(M, [1, NaN])],
    ['reshape', () => t.reshape(M, [NaN, 4])],
    ['zeros', () => t.zeros([NaN])],
    ['clamp', () => t.clamp(M, NaN, 1)],
    ['batchNorm', () => t.batchNorm(X, { training: true, momentum: NaN })],
    ['batchNorm', () => t.batchNorm(X, { training: true, eps: NaN })],
    ['crossEntropy', () => t.crossEntropy(M, L, { labelSmoothing: NaN })],
    ['topk', () => t.topk(M, NaN)],
    ['select', () => t.select(M, 0, NaN)],
    ['slice', () => t.slice(M, 0, NaN, 2)],
    ['randint', () => t.randint(0, NaN, [2])],
    ['randperm', () => t.randperm(NaN)],
    ['manualSeed', () => t.manualSeed(NaN)],
    ['pow', () => t.pow(M, NaN)],
    ['setNumThreads', () => t.setNumThreads(NaN)],
    ['adaptiveAvgPool2d', () => t.adaptiveAvgPool2d(X, NaN)],
    ['avgPool2d', () => t.avgPool2d(X, NaN)],
    ['oneHot', () => t.oneHot(L, NaN)],
    ['Generator', () => new t.Generator(NaN)],
    ['repeat', () => t.repeat(M, [1, NaN])],
    ['roll', () => t.roll(M, [NaN], [0])],
    ['stack', () => t.stack([M, M], NaN)],
    ['tensor', () => t.tensor([1, NaN], [2], { dtype: 'int64' })],
    ['tensor', () => t.tensor(new Float32Array(2), [NaN])],
  ];
  const hugeCalls = (s: number[]): Call[] => [
    ['zeros', () => t.zeros(s)],
    ['ones', () => t.ones(s)],
    ['full', () => t.full(s, 1)],
    ['randn', () => t.randn(s)],
    ['rand', () => t.rand(s, { generator: new t.Generator(2) })],
    ['randint', () => t.randint(0, 9, s)],
    ['repeat', () => t.repeat(M, [s[0]!, s[1]!])],
    ['tensor', () => t.tensor(new Float32Array(4), s)],
    ['arange', () => t.arange(0, 2 ** 53)],
  ];

  const categories: Record<string, () => Call> = {
    'wrong arg types': () => r.pick(wrongType(r.pick(badTensors))),
    'wrong types for optional args': () => {
      const [pool, call] = r.pick(optionalSlots);
      return call(r.pick(pool));
    },
    'wrong shapes': () => r.pick(wrongShape()),
    'wrong dtypes': () => r.pick(wrongDtype()),
    'disposed tensors': () => r.pick(wrongType(gone)),
    'bad dims': () => (r.next() < 0.8 ? r.pick(dimCalls(r.pick(badDims))) : r.pick(dimCallsPlusOne(r.pick(badDimsPlusOne)))),
    'unknown dtype names': () => r.pick(dtypeCalls(r.pick(badDtypes))),
    'bad or absent devices': () => r.pick(deviceCalls(r.pick(badDevices))),
    NaN: () => r.pick(nanCalls()),
    'huge sizes': () => r.pick(hugeCalls(r.pick(HUGE_SHAPES))),
  };
  const names = Object.keys(categories);
  const counts: Record<string, number> = {};
  const failures: Outcome[] = [];
  const before = t.liveTensors();
  const N = 800;
  for (let i = 0; i < N; i++) {
    const category = names[i % names.length]!; // every category equally often, the call within it at random
    const [op, fn] = t.tidy(() => categories[category]!());
    counts[category] = (counts[category] ?? 0) + 1;
    const problem = expectOpError(op, fn);
    if (problem) failures.push({ op, category, detail: `call #${i}: ${problem}` });
  }
  assert.deepEqual(failures, [], `${failures.length} malformed calls were not rejected properly`);
  assert.equal(
    Object.values(counts).reduce((a, b) => a + b, 0),
    N,
  );
  // a rejected call leaves nothing behind
  assert.equal(t.liveTensors(), before);
  // and the engine still works
  assert.deepEqual(
    t.tidy(() => t.add(t.ones([2]), 1).toArray()),
    [2, 2],
  );
  t.dispose([X, W, M, L]);
});

// ---- the raw addon ----

const ids = new Map<string, number>();
function opId(full: string): number {
  let id = ids.get(full);
  if (id === undefined) {
    const [name, overload = ''] = full.split('.');
    id = native.opId(name!, overload);
    ids.set(full, id);
  }
  return id;
}

test('fuzz: malformed raw native.call invocations raise Errors naming the libtorch operator', () => {
  const r = rng(42);
  const mk = (shape: number[], dtype: t.DType = 'float32') => t.zeros(shape, { dtype });
  const M = mk([3, 4]),
    X = mk([1, 3, 5, 5]),
    W = mk([2, 4, 3, 3]),
    I = mk([2], 'int64');
  const gone = t.zeros([2]);
  const goneHandle = gone.handle;
  gone.dispose();
  const notTensors: KernelArg[] = ['x', 42, true, [], [1, 2], goneHandle, {} as unknown as KernelArg];
  const requiredNotTensors: KernelArg[] = [...notTensors, null];

  type RawCall = [op: string, args: KernelArg[]];
  const h = (x: Tensor): Handle => x.handle;
  const families: Record<string, () => RawCall> = {
    'wrong types in tensor slots': () =>
      r.pick<RawCall>([
        ['aten::neg', [r.pick(requiredNotTensors)]],
        ['aten::add.Tensor', [h(M), r.pick(requiredNotTensors)]],
        ['aten::conv2d', [r.pick(requiredNotTensors), h(W)]],
        ['aten::conv2d', [h(X), h(W), r.pick(notTensors)]],
        ['aten::cat', [[h(M), r.pick(requiredNotTensors) as Handle]]],
        ['aten::cat', [r.pick(['x', 1, true] as KernelArg[])]],
        ['aten::index.Tensor', [h(M), [r.pick(notTensors) as Handle]]],
        ['aten::matmul', [r.pick(requiredNotTensors), h(M)]],
      ]),
    'wrong scalar types': () =>
      r.pick<RawCall>([
        ['aten::dropout', [h(M), r.pick(['x', true, null, [0.5]] as KernelArg[]), true]],
        ['aten::dropout', [h(M), 0.5, r.pick(['yes', 1, null] as KernelArg[])]],
        ['aten::sum.dim_IntList', [h(M), r.pick(['a', true, [true], ['0'], {} as KernelArg] as KernelArg[]), false]],
        ['aten::softmax.int', [h(M), r.pick(['x', true, [1]] as KernelArg[]), null]],
        ['aten::reshape', [h(M), r.pick(['12', [true], [[12]]] as KernelArg[])]],
        ['aten::full', [[2], r.pick(['x', [1]] as KernelArg[])]],
        ['aten::gelu', [h(M), r.pick([1, true, ['none']] as KernelArg[])]],
      ]),
    'wrong shapes': () =>
      r.pick<RawCall>([
        ['aten::conv2d', [h(X), h(W)]],
        ['aten::add.Tensor', [h(M), h(mk([r.int(5, 9)]))]],
        ['aten::reshape', [h(M), [r.int(13, 40)]]],
        ['aten::matmul', [h(M), h(M)]],
        ['aten::cat', [[h(M), h(mk([2, r.int(5, 8)]))], 0]],
        ['aten::linear', [h(M), h(mk([2, r.int(5, 9)]))]],
        ['aten::cross_entropy_loss', [h(M), h(mk([r.int(4, 8)], 'int64'))]],
        ['aten::view', [h(t.transpose(M, 0, 1)), [12]]],
      ]),
    'wrong dtypes': () =>
      r.pick<RawCall>([
        ['aten::conv2d', [h(mk([1, 4, 5, 5], 'int64')), h(W)]],
        ['aten::index_select', [h(M), 0, h(mk([1]))]],
        ['aten::cross_entropy_loss', [h(M), h(mk([3]))]],
        ['aten::matmul', [h(mk([3, 4], 'int64')), h(mk([4, 2]))]],
        ['aten::gather', [h(M), 1, h(mk([3, 1]))]],
        ['aten::where.self', [h(M), h(M), h(M)]],
      ]),
    'disposed tensors': () =>
      r.pick<RawCall>([
        ['aten::neg', [goneHandle]],
        ['aten::add.Tensor', [h(M), goneHandle]],
        ['aten::cat', [[h(M), goneHandle]]],
        ['aten::conv2d', [h(X), goneHandle]],
      ]),
    'bad dims': () =>
      r.pick<RawCall>([
        ['aten::sum.dim_IntList', [h(M), [r.pick([2, 5, -3, 100])], false]],
        ['aten::softmax.int', [h(M), r.pick([2, 9, -3]), null]],
        ['aten::cat', [[h(M), h(M)], r.pick([2, 7, -3])]],
        ['aten::index_select', [h(M), r.pick([2, -9]), h(I)]],
        ['aten::select.int', [h(M), 0, r.pick([3, 9, -4])]],
        ['aten::transpose.int', [h(M), 0, r.pick([2, -3])]],
      ]),
    'unknown dtype names': () =>
      r.pick<RawCall>([
        ['aten::zeros', [[2], r.pick(['float99', 'Float', 'double', ''])]],
        ['aten::to.dtype_layout', [h(M), r.pick(['nope', 'f32'])]],
        ['aten::sum.dim_IntList', [h(M), [0], false, r.pick(['x', 'int'])]],
        ['aten::softmax.int', [h(M), 1, r.pick(['half', 'fp16'])]],
      ]),
    'huge sizes': () =>
      r.pick<RawCall>([
        ['aten::zeros', [r.pick(HUGE_SHAPES)]],
        ['aten::full', [r.pick(HUGE_SHAPES), 1]],
        ['aten::randn', [r.pick(HUGE_SHAPES)]],
        ['aten::repeat', [h(M), [1e8, 1e8]]],
        ['aten::zeros', [[-r.int(1, 9), 2]]],
      ]),
    'argument counts': () =>
      r.pick<RawCall>([
        ['aten::neg', []],
        ['aten::add.Tensor', [h(M)]],
        ['aten::neg', [h(M), 1, 2]],
        ['aten::conv2d', [h(X)]],
        ['aten::zeros', Array(9).fill(null)],
      ]),
    'NaN for numbers': () =>
      r.pick<RawCall>([
        ['aten::dropout', [h(M), NaN, true]],
        ['aten::arange.start_step', [0, NaN, 1]],
        ['aten::arange.start_step', [0, 5, NaN]],
      ]),
  };
  if (!CUDA)
    families['absent CUDA device'] = () =>
      r.pick<RawCall>([
        ['aten::zeros', [[2], null, null, r.pick(['cuda:0', 'cuda', 'cuda:3'])]],
        ['aten::to.dtype_layout', [h(M), null, null, 'cuda:0']],
      ]);

  const names = Object.keys(families);
  const failures: string[] = [];
  const N = 400;
  const before = t.liveTensors();
  for (let i = 0; i < N; i++) {
    const family = names[i % names.length]!;
    t.tidy(() => {
      // frees the tensors a family built for this call
      const [op, args] = families[family]!();
      try {
        const out = native.call(opId(op), args);
        failures.push(`#${i} ${family}: ${op} returned ${String(out)}`);
        if (out && typeof out === 'object' && !Array.isArray(out)) native.dispose(out as Handle);
      } catch (e) {
        if (!(e instanceof Error)) failures.push(`#${i} ${family}: ${op} threw a non-Error`);
        else if (!e.message.includes(op)) failures.push(`#${i} ${family}: message does not name ${op}: ${e.message.slice(0, 160)}`);
      }
    });
  }
  assert.deepEqual(failures, []);
  assert.equal(t.liveTensors(), before);
  t.dispose([M, X, W, I]);
});

test("libtorch exceptions become Errors carrying our op name, the operator and libtorch's message (no C++ backtrace)", () => {
  t.tidy(() => {
    const M = t.randn([3, 4]);
    const cases: [() => unknown, RegExp][] = [
      [
        () => t.conv2d(t.randn([2, 3, 6, 6]), t.ones([4, 3, 3, 3], { dtype: 'int64' })),
        /^conv2d: aten::conv2d: Input type \(CPUFloatType\) and weight type \(CPULongType\) should be the same/,
      ],
      [() => t.gather(M, 1, t.tensor([9], [1, 1], { dtype: 'int64' })), /^gather: aten::gather: index 9 is out of bounds for dimension 1 with size 4$/],
      [() => t.crossEntropy(M, t.tensor([1, 2, 9], [3], { dtype: 'int64' })), /^crossEntropy: aten::cross_entropy_loss: Target 9 is out of bounds\.$/],
      // kshare's caching CPU allocator, or libtorch's under KSHARE_CPU_ALLOCATOR=system
      [
        () => t.zeros([1e8, 1e8]),
        /^zeros: aten::zeros: .*(kshare CPU allocator: out of memory allocating|DefaultCPUAllocator: can't allocate memory: you tried to allocate) 40000000000000000 bytes/,
      ],
      [
        () => t.matmul(t.ones([3, 4], { dtype: 'int64' }), t.randn([4, 2])),
        /^matmul: aten::matmul: (expected scalar type Long but found Float|expected m1 and m2 to have the same dtype, but got: long int != float)$/,
      ], // libtorch 1.13 | 2.x
      [() => t.copy_(M, t.zeros([7])), /^copy_: aten::copy_: The size of tensor a \(4\) must match the size of tensor b \(7\) at non-singleton dimension 1$/],
      [() => t.view(t.transpose(M, 0, 1), [12]), /^view: aten::view: view size is not compatible with input tensor's size and stride/],
    ];
    for (const [fn, re] of cases) {
      assert.throws(fn, (e: unknown) => {
        assert.ok(e instanceof Error);
        assert.match(e.message, re);
        assert.doesNotMatch(e.message, /Exception raised from|frame #\d/);
        return true;
      });
    }
    // straight from the addon: the operator's full name and libtorch's text
    assert.throws(() => native.call(opId('aten::conv2d'), [t.zeros([1, 3, 4, 4]).handle, t.zeros([2, 4, 3, 3]).handle]), {
      message: 'aten::conv2d: Given groups=1, weight of size [2, 4, 3, 3], expected input[1, 3, 4, 4] to have 4 channels, but got 3 channels instead',
    });
    // the addon's other entry points name themselves
    assert.throws(() => native.backward([t.zeros([1]).handle], null, false), { message: /^backward: element 0 of tensors does not require grad/ });
    assert.throws(() => native.meta({} as Handle), { message: 'meta: expected a tensor handle' });
    assert.throws(() => native.setRngState(t.zeros([3]).handle), { message: /^setRngState: RNG state must be a torch\.ByteTensor/ });
    assert.throws(() => t.setRngState({ cpu: t.zeros([3]), cuda: null }), /setRngState/);
  });
});

test('raw addon entry points name the op and refuse inexact integers', () => {
  const M = t.zeros([2]);
  try {
    const problems: string[] = [];
    const check = (what: string, fn: () => unknown, op: string) => {
      try {
        fn();
        problems.push(`${what}: no error`);
      } catch (e) {
        if (!(e as Error).message.includes(op)) problems.push(`${what}: ${(e as Error).message}`);
      }
    };
    check('args not an array', () => native.call(opId('aten::neg'), 5 as unknown as KernelArg[]), 'aten::neg');
    check('op id not a number', () => native.call('x' as unknown as number, []), 'call');
    check('bad device string', () => native.call(opId('aten::zeros'), [[2], null, null, 'gpu']), 'aten::zeros');
    check('NaN in an int list', () => native.dispose(native.call(opId('aten::zeros'), [[NaN, 2]]) as Handle), 'aten::zeros');
    check('fraction in an int list', () => native.dispose(native.call(opId('aten::zeros'), [[1.5]]) as Handle), 'aten::zeros');
    check('name string in an int slot', () => native.dispose(native.call(opId('aten::slice.Tensor'), [M.handle, 0, 'contiguous', 1]) as Handle), 'aten::slice');
    assert.deepEqual(problems, []);
  } finally {
    M.dispose();
  }
});
