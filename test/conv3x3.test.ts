// kshare's 3x3 convolution on AMX tiles (native/amx_conv3x3.cc): forward, grad input and grad
// weight, NCHW and channels-last, against libtorch's conv2d in this process and against python3-torch, with outputs
// poisoned with NaN before the kernel writes them (KSHARE_NATIVE_POISON), so an element left
// unwritten fails; conv2d's routing to it; its fallback to libtorch where it does not apply.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { runKernel } from '../src/tensor/kernels.js';
import { wrap } from '../src/tensor/tensor.js';
import { convGradients, compareConv, conv2dCall, torchConvGradients, type ConvCall, type ConvData, type ConvResult } from './helpers/conv-parity.js';
import { withEnv } from './helpers/env.js';
import { maxRelError as maxRel } from './helpers/python.js';

const TOL = 1e-5;
process.env.KSHARE_NATIVE_POISON = '1';
const amxSkip = t.runtimeInfo().amx ? false : 'this CPU (or OS) has no AMX-BF16: 3x3 convolutions stay on libtorch';
const CALL: ConvCall = { padding: [1, 1], dilation: [1, 1], groups: 1 };

interface Shape {
  n: number;
  c: number;
  out: number;
  h: number;
  w: number;
  /** Input (and r) channels-last. */
  cl?: boolean;
}

// Channels multiples of 32; images from 1 x 1 to wider than a 32-pixel block, odd sizes, and
// SE-ResNet's three stages (whose grids hold 1, 4 and 11-14 images a group).
const SHAPES: Shape[] = [
  { n: 2, c: 32, out: 32, h: 5, w: 7 },
  { n: 3, c: 64, out: 96, h: 8, w: 8 },
  { n: 1, c: 64, out: 64, h: 32, w: 32 }, // batch 1
  { n: 4, c: 32, out: 32, h: 1, w: 1 },
  { n: 5, c: 128, out: 32, h: 9, w: 3 },
  { n: 3, c: 32, out: 64, h: 17, w: 40 },
  { n: 32, c: 64, out: 64, h: 32, w: 32 },
  { n: 32, c: 128, out: 128, h: 16, w: 16 },
  { n: 33, c: 256, out: 256, h: 8, w: 8 }, // a last group smaller than the others
  { n: 3, c: 64, out: 96, h: 8, w: 8, cl: true },
  { n: 3, c: 32, out: 64, h: 17, w: 40, cl: true },
  { n: 4, c: 32, out: 32, h: 1, w: 1, cl: true }, // 1 x 1 images: both layouts alike
  { n: 32, c: 128, out: 128, h: 16, w: 16, cl: true },
];

const label = (s: Shape) => `(${s.n},${s.c},${s.h},${s.w}) -> ${s.out}${s.cl ? ' channels-last' : ''}`;

function makeData(s: Shape, seed: number): ConvData {
  const gen = new t.Generator(seed);
  const x = t.randn([s.n, s.c, s.h, s.w], { generator: gen }),
    w = t.mul(t.randn([s.out, s.c, 3, 3], { generator: gen }), 0.1),
    r = t.randn([s.n, s.out, s.h, s.w], { generator: gen });
  if (!s.cl) return { x, w, b: null, r };
  return { x: t.contiguous(x, 'channels_last'), w, b: null, r: t.contiguous(r, 'channels_last') };
}

/** conv2d (padding 1) by kshare's route or libtorch's, then the gradients of sum(y * r). */
function run(data: ConvData, native: boolean, call: ConvCall = CALL): ConvResult {
  return withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0' }, () => convGradients(data, conv2dCall(call)));
}

/** The AMX products run by f (runtimeInfo's counter). */
function amxCalls(f: () => void): number {
  const before = t.runtimeInfo().amxProducts;
  f();
  return t.runtimeInfo().amxProducts - before;
}

const compare = (name: string, got: ConvResult, want: Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>) => compareConv(name, got, want, TOL);

test('on AMX, 3x3 conv2d matches libtorch within 1e-5: forward, grad input, grad weight, at 1 and 2 threads', { skip: amxSkip }, () => {
  SHAPES.forEach((s, i) => {
    const data = makeData(s, 900 + i);
    let fast: ConvResult | undefined;
    assert.ok(amxCalls(() => (fast = run(data, true))) >= 3, `${label(s)}: forward and both gradients ran on AMX`);
    compare(label(s), fast!, run(data, false));
    assert.equal(fast!.yChannelsLast, !!s.cl && s.h * s.w > 1, `${label(s)}: output keeps the input's memory format`);
    const before = t.runtimeInfo().numThreads;
    try {
      t.setNumThreads(2);
      // Each output pixel is the same sum whichever thread's group holds its image.
      const two = run(data, true);
      assert.deepEqual(two.y, fast!.y, `${label(s)}: 2 threads, forward bit for bit`);
      compare(`${label(s)} 2 threads`, two, fast!);
    } finally {
      t.setNumThreads(before);
    }
    t.dispose(data);
  });
});

test("on AMX, padding 'same' takes the 3x3 operator as padding 1 does", { skip: amxSkip }, () => {
  const data = makeData({ n: 2, c: 32, out: 64, h: 6, w: 9 }, 940);
  const same = (x: t.Tensor, w: t.Tensor) => t.conv2d(x, w, null, { padding: 'same' });
  let got: ConvResult | undefined;
  assert.ok(amxCalls(() => (got = convGradients(data, same))) >= 3, "padding 'same' on AMX");
  assert.deepEqual(got!.y, run(data, true).y, "padding 'same' and padding 1: the same bits");
  compare("padding 'same'", got!, run(data, false));
  t.dispose(data);
});

test('on AMX, 3x3 conv2d matches python3-torch, and a kernel used twice adds both gradients', { skip: amxSkip }, () => {
  const cases = [
    { s: SHAPES[1]!, call: CALL },
    { s: SHAPES[0]!, call: { ...CALL, twice: true } },
    { s: { n: 2, c: 64, out: 64, h: 6, w: 11 }, call: { ...CALL, twice: true } },
    { s: SHAPES[10]!, call: CALL }, // channels-last
  ].map(({ s, call }, i) => ({ s, call, data: makeData(s, 950 + i) }));
  const torch = torchConvGradients(cases.map(({ s, data, call }) => ({ data, channelsLast: !!s.cl, call })));
  cases.forEach(({ s, call, data }, i) => {
    let fast: ConvResult | undefined;
    assert.ok(amxCalls(() => (fast = run(data, true, call))) > 0, `${label(s)}: on AMX`);
    compare(`${label(s)}${call.twice ? ' twice' : ''} vs python3-torch`, fast!, torch[i]!);
    t.dispose(data);
  });
});

test('3x3 convolutions that do not fit stay on libtorch, with the same numbers', () => {
  const base = { n: 2, c: 32, out: 32, h: 6, w: 5 };
  const cases: [string, Shape, ConvCall, (d: ConvData) => ConvData, Record<string, string>][] = [
    ['48 input channels', { ...base, c: 48 }, CALL, (d) => d, {}],
    ['40 output channels', { ...base, out: 40 }, CALL, (d) => d, {}],
    ['288 x 256 channels (a packed weight over 3.4 MiB)', { ...base, c: 288, out: 256, h: 3, w: 3 }, CALL, (d) => d, {}],
    ['stride 2', base, CALL, (d) => d, {}],
    ['padding 2, dilation 2', base, { padding: [2, 2], dilation: [2, 2], groups: 1 }, (d) => d, {}],
    ['groups 2', { ...base, c: 64 }, { ...CALL, groups: 2 }, (d) => d, {}],
    ['with bias', base, CALL, (d) => ({ ...d, b: t.randn([base.out]) }), {}],
    ['a transposed input', base, CALL, (d) => ({ ...d, x: t.transpose(t.contiguous(t.transpose(d.x, 2, 3)), 2, 3) }), {}],
    ['KSHARE_NATIVE_CONV3X3=0', base, CALL, (d) => d, { KSHARE_NATIVE_CONV3X3: '0' }],
    ['KSHARE_NATIVE_AMX=0', base, CALL, (d) => d, { KSHARE_NATIVE_AMX: '0' }],
  ];
  cases.forEach(([what, s, call, change], i) => {
    const gen = new t.Generator(970 + i);
    const groups = call.groups;
    let data: ConvData = {
      x: t.randn([s.n, s.c, s.h, s.w], { generator: gen }),
      w: t.randn([s.out, s.c / groups, 3, 3], { generator: gen }),
      b: null,
      r: t.randn([s.n, s.out, s.h, s.w], { generator: gen }),
    };
    data = change(data);
    const env = cases[i]![4];
    const stride = what === 'stride 2' ? 2 : 1;
    const conv = (x: t.Tensor, w: t.Tensor, b: t.Tensor | null) =>
      t.conv2d(x, w, b, { padding: call.padding, dilation: call.dilation, groups: call.groups, stride });
    if (stride === 2) data.r = t.randn([s.n, s.out, 3, 3], { generator: gen });
    let fast: ConvResult | undefined;
    const calls = amxCalls(() => (fast = withEnv(env, () => convGradients(data, conv))));
    assert.equal(calls, 0, `${what}: not on AMX`);
    compare(
      what,
      fast!,
      withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => convGradients(data, conv)),
    );
  });
});

test('kshare::conv3x3 called where it cannot run on AMX gives libtorch numbers, and bad shapes a clear error', () => {
  const gen = new t.Generator(990);
  const x = t.randn([2, 32, 6, 7], { generator: gen }),
    w = t.randn([32, 32, 3, 3], { generator: gen });
  const want = withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => t.conv2d(x, w, null, { padding: 1 }).toFloat32Array());
  withEnv({ KSHARE_NATIVE_AMX: '0' }, () => {
    const got = wrap(runKernel('conv2d', 'conv3x3', [x.handle, w.handle]));
    assert.deepEqual(got.toFloat32Array(), want, 'off AMX the operator is libtorch conv2d');
  });
  const five = t.randn([32, 32, 5, 5], { generator: gen });
  assert.throws(() => runKernel('conv2d', 'conv3x3', [x.handle, five.handle]), /kshare::conv3x3: weight must be \[O, 32, 3, 3\].*got \[32, 32, 5, 5\]/);
  const flat = t.randn([2, 32, 6], { generator: gen });
  assert.throws(() => runKernel('conv2d', 'conv3x3', [flat.handle, w.handle]), /kshare::conv3x3: input must be 4-D/);
  t.dispose([x, w, five, flat]);
});

test('on AMX, an infinity or NaN in the input or weight gives libtorch results (the products fall back)', { skip: amxSkip }, () => {
  const s = { n: 3, c: 32, out: 64, h: 7, w: 6 };
  for (const [where, value] of [
    ['input', Infinity],
    ['input', NaN],
    ['weight', -Infinity],
  ] as const) {
    const data = makeData(s, 995);
    const poisoned = where === 'input' ? data.x : data.w;
    const values = poisoned.toFloat32Array();
    values[17] = value;
    const replaced = t.tensor(values, poisoned.shape);
    const d = where === 'input' ? { ...data, x: replaced } : { ...data, w: replaced };
    const y = (native: boolean) =>
      withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0' }, () => t.tidy(() => t.conv2d(d.x, d.w, null, { padding: 1 }).toFloat32Array()));
    const got = y(true),
      want = y(false);
    for (let i = 0; i < want.length; i++) {
      if (Number.isNaN(want[i]!)) assert.ok(Number.isNaN(got[i]!), `${where} ${value}: element ${i} NaN as in libtorch`);
      else assert.equal(got[i], want[i], `${where} ${value}: element ${i} as libtorch's`);
    }
    t.dispose([data.x, data.w, data.r, replaced]);
  }
});

test('on AMX, batch 1 on 2 threads: NCHW splits the output channels between threads, channels-last takes oneDNN', { skip: amxSkip }, () => {
  const before = t.runtimeInfo().numThreads;
  const gen = new t.Generator(997);
  const x = t.randn([1, 64, 12, 10], { generator: gen }),
    w = t.mul(t.randn([96, 64, 3, 3], { generator: gen }), 0.1);
  const xl = t.contiguous(x, 'channels_last');
  const forward = (v: t.Tensor) => t.noGrad(() => t.tidy(() => t.conv2d(v, w, null, { padding: 1 }).toFloat32Array()));
  try {
    const one = forward(x);
    t.setNumThreads(2);
    let two: Float32Array | undefined;
    assert.ok(amxCalls(() => (two = forward(x))) > 0, 'NCHW at batch 1 stays on AMX');
    assert.deepEqual(two, one, 'NCHW: the same bits when the output channels are split');
    let cl: Float32Array | undefined;
    assert.equal(
      amxCalls(() => (cl = forward(xl))),
      0,
      'channels-last at batch 1 on 2 threads: oneDNN',
    );
    const want = withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => forward(x));
    assert.ok(maxRel(cl!, want) <= TOL, 'channels-last matches libtorch');
  } finally {
    t.setNumThreads(before);
    t.dispose([x, w, xl]);
  }
});
