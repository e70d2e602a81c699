// kshare's depthwise convolution kernel (native/depthwise_conv.cc): forward, grad input, grad
// weight and grad bias against libtorch's own conv2d in this process and against python3-torch,
// on NCHW and channels-last inputs, both instruction sets, with outputs poisoned with NaN
// before the kernels write them (KSHARE_NATIVE_POISON), so an element left unwritten fails;
// and conv2d's routing of convolutions to kshare's kernel and of small-batch 1x1 ones to oneDNN.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { runKernel } from '../src/tensor/kernels.js';
import { wrap } from '../src/tensor/tensor.js';
import { withTracer } from '../src/tensor/trace.js';
import { createModel } from '../src/models/registry.js';
import { maxRelError } from './helpers/python.js';
import { withEnv, withLibtorchOps } from './helpers/env.js';
import {
  convGradients,
  conv2dCall,
  compareConv,
  torchConvGradients,
  assertClose as assertCloseTo,
  type ConvCall,
  type ConvData,
  type ConvResult,
} from './helpers/conv-parity.js';

const TOL = 1e-5;
const MODEL_TOL = 1e-4;
process.env.KSHARE_NATIVE_POISON = '1';

interface Shape {
  n: number;
  c: number;
  h: number;
  w: number;
  k: number | [number, number];
  d?: number | [number, number];
  bias: boolean;
  cl: boolean;
}

const SHAPES: Shape[] = [
  { n: 2, c: 5, h: 9, w: 9, k: 3, bias: true, cl: false },
  { n: 1, c: 3, h: 7, w: 13, k: 5, bias: true, cl: false },
  { n: 1, c: 3, h: 7, w: 13, k: 5, bias: true, cl: true },
  { n: 3, c: 8, h: 16, w: 16, k: 5, bias: false, cl: false },
  { n: 3, c: 8, h: 16, w: 16, k: 5, bias: true, cl: true },
  { n: 2, c: 11, h: 11, w: 17, k: 7, bias: true, cl: false },
  { n: 2, c: 11, h: 11, w: 17, k: 7, bias: false, cl: true },
  { n: 2, c: 16, h: 12, w: 10, k: 9, bias: true, cl: false },
  { n: 2, c: 20, h: 12, w: 10, k: 9, bias: true, cl: true },
  { n: 1, c: 4, h: 5, w: 3, k: 9, bias: true, cl: false }, // kernel larger than the image
  { n: 1, c: 9, h: 15, w: 15, k: 15, bias: true, cl: false },
  { n: 1, c: 9, h: 15, w: 15, k: 15, bias: false, cl: true },
  { n: 2, c: 6, h: 13, w: 11, k: 3, d: 2, bias: true, cl: false },
  { n: 2, c: 6, h: 13, w: 11, k: 5, d: [2, 3], bias: true, cl: true },
  { n: 2, c: 4, h: 9, w: 8, k: [3, 7], bias: true, cl: false },
  { n: 1, c: 1, h: 1, w: 1, k: 3, bias: true, cl: false },
  // Whole 16-lane vectors (the AVX-512 weight gradient): two per row, and three channel blocks.
  { n: 3, c: 4, h: 6, w: 32, k: 5, bias: true, cl: false },
  { n: 2, c: 48, h: 5, w: 6, k: 3, bias: true, cl: true },
];

const pair = (v: number | [number, number]): [number, number] => (typeof v === 'number' ? [v, v] : v);
const label = (s: Shape) =>
  `(${s.n},${s.c},${s.h},${s.w}) k${pair(s.k).join('x')} d${pair(s.d ?? 1).join('x')} ${s.cl ? 'channels-last' : 'NCHW'}${s.bias ? ' +bias' : ''}`;

type Data = ConvData;

function makeData(s: Shape, seed: number): Data {
  const gen = new t.Generator(seed);
  const [kh, kw] = pair(s.k);
  let x = t.randn([s.n, s.c, s.h, s.w], { generator: gen });
  let r = t.randn([s.n, s.c, s.h, s.w], { generator: gen });
  if (s.cl) {
    x = t.contiguous(x, 'channels_last');
    r = t.contiguous(r, 'channels_last');
  }
  return { x, w: t.randn([s.c, 1, kh, kw], { generator: gen }), b: s.bias ? t.randn([s.c], { generator: gen }) : null, r };
}

/**
 * Which kernels: the portable ones, or AVX2 where the CPU has AVX-512 (the default takes the
 * widest); the forward and grad input forced to kshare's own kernels or to oneDNN (by default
 * NCHW square kernels at dilation 1 take kshare's plane kernel, the rest oneDNN up to k9).
 */
interface Variant {
  isa?: 'generic' | 'avx2';
  own?: 'kshare' | 'onednn';
}

/** conv2d (routed or not, per KSHARE_NATIVE_KERNELS), then the gradients of sum(y * r). */
function run(s: Shape, data: Data, native: boolean, variant: Variant = {}): ConvResult {
  const env = {
    KSHARE_NATIVE_KERNELS: native ? '1' : '0',
    KSHARE_NATIVE_ISA: variant.isa ?? '',
    KSHARE_NATIVE_DEPTHWISE_FORWARD: variant.own ?? '',
  };
  return withEnv(env, () => convGradients(data, conv2dCall(call(s))));
}

const assertClose = (what: string, got: Float32Array, want: Float32Array) => assertCloseTo(what, got, want, TOL);
const compare = (name: string, got: ConvResult, want: Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>) => compareConv(name, got, want, TOL);

test('depthwise conv2d matches libtorch conv2d: forward and every gradient, every kernel variant', () => {
  SHAPES.forEach((s, i) => {
    const data = makeData(s, 100 + i);
    const ref = run(s, data, false);
    const fast = run(s, data, true);
    compare(label(s), fast, ref);
    compare(`${label(s)} portable`, run(s, data, true, { isa: 'generic' }), ref);
    compare(`${label(s)} AVX2`, run(s, data, true, { isa: 'avx2' }), ref);
    compare(`${label(s)} own forward kernels`, run(s, data, true, { own: 'kshare' }), ref);
    compare(`${label(s)} own forward kernels, portable`, run(s, data, true, { own: 'kshare', isa: 'generic' }), ref);
    compare(`${label(s)} own forward kernels, AVX2`, run(s, data, true, { own: 'kshare', isa: 'avx2' }), ref);
    compare(`${label(s)} forward and grad input by oneDNN`, run(s, data, true, { own: 'onednn' }), ref);
    assert.equal(fast.yChannelsLast, s.cl && s.c > 1 && s.h * s.w > 1, `${label(s)}: output keeps the input's memory format`);
    t.dispose(data);
  });
});

/** conv2d's options for a shape: "same" padding for its kernel and dilation, one group per channel. */
function call(s: Shape, twice = false): ConvCall {
  const d = pair(s.d ?? 1),
    [kh, kw] = pair(s.k);
  return { padding: [(d[0] * (kh - 1)) / 2, (d[1] * (kw - 1)) / 2], dilation: d, groups: s.c, twice };
}

test('depthwise conv2d matches python3-torch, including a kernel shared by two layers', () => {
  const cases = SHAPES.map((s, i) => ({ s, data: makeData(s, 500 + i), channelsLast: s.cl, call: call(s, i % 3 === 0) }));
  const ref = torchConvGradients(cases);
  cases.forEach(({ s, data, call: c }, i) => {
    const name = `${label(s)}${c.twice ? ' used twice' : ''}`;
    compare(name, convGradients(data, conv2dCall(c)), ref[i]!);
    t.dispose(data);
  });
});

test('conv2d routes depthwise convolutions to the kshare kernel only where it applies', () => {
  t.tidy(() => {
    const x = t.randn([2, 6, 9, 9]),
      w = t.randn([6, 1, 5, 5]),
      b = t.randn([6]);
    const direct = t.tidy(() => wrap(runKernel('test', 'depthwiseConv2d', [x.handle, w.handle, b.handle, [1, 1]])));
    const same = (a: Tensor, c: Tensor) => assert.deepEqual(a.toFloat32Array(), c.toFloat32Array());
    // Routed: bit-identical to the kshare operator.
    same(t.conv2d(x, w, b, { padding: 2, groups: 6 }), direct);
    same(t.conv2d(x, w, b, { padding: 'same', groups: 6 }), direct);
    // Not routed: bit-identical to libtorch's conv2d (KSHARE_NATIVE_KERNELS=0).
    const libtorch = withLibtorchOps<Tensor>;
    const cases: [string, () => Tensor][] = [
      ['stride 2', () => t.conv2d(x, w, b, { padding: 2, groups: 6, stride: 2 })],
      ['padding other than same', () => t.conv2d(x, w, b, { padding: 1, groups: 6 })],
      ['even kernel', () => t.conv2d(x, t.randn([6, 1, 4, 4]), b, { padding: 'same', groups: 6 })],
      ['channel multiplier 2', () => t.conv2d(x, t.randn([12, 1, 5, 5]), null, { padding: 2, groups: 6 })],
      ['float64', () => t.conv2d(t.to(x, 'float64'), t.to(w, 'float64'), null, { padding: 2, groups: 6 })],
    ];
    for (const [name, fn] of cases) {
      const gen = () => {
        t.manualSeed(7);
        return fn();
      };
      assert.deepEqual(t.to(gen(), 'float32').toFloat32Array(), t.to(libtorch(gen), 'float32').toFloat32Array(), name);
    }
    // While tracing (ONNX export), libtorch's conv2d, which the exporter maps.
    const traced: string[] = [];
    withTracer(
      (c) => traced.push(c.kernel),
      () => t.conv2d(x, w, b, { padding: 2, groups: 6 }),
    );
    assert.deepEqual(traced, ['conv2d']);
    // Under CPU autocast the convolution runs in bfloat16 through libtorch, as before.
    const ac = t.autocast({ device: 'cpu', dtype: 'bfloat16' }, () => t.conv2d(x, w, b, { padding: 2, groups: 6 }));
    assert.equal(ac.dtype, 'bfloat16');
    // Called directly under autocast, the operator does the same (its AutocastCPU kernel).
    const acDirect = t.autocast({ device: 'cpu', dtype: 'bfloat16' }, () => wrap(runKernel('test', 'depthwiseConv2d', [x.handle, w.handle, b.handle, [1, 1]])));
    assert.equal(acDirect.dtype, 'bfloat16');
    same(t.to(acDirect, 'float32'), t.to(ac, 'float32'));
  });
});

test('depthwise operator refuses what it does not support, with the reason', () => {
  t.tidy(() => {
    const call = (x: Tensor, w: Tensor, d: number[] = [1, 1]) => runKernel('test', 'depthwiseConv2d', [x.handle, w.handle, null, d]);
    assert.throws(() => call(t.randn([1, 4, 5, 5]), t.randn([4, 1, 4, 4])), /kernel size must be odd, got 4x4/);
    assert.throws(() => call(t.randn([1, 4, 5, 5]), t.randn([3, 1, 3, 3])), /weight must be \[4, 1, kh, kw\]/);
    assert.throws(() => call(t.randn([4, 5, 5]), t.randn([4, 1, 3, 3])), /input must be 4-D/);
    assert.throws(() => call(t.randn([1, 4, 5, 5]), t.randn([4, 1, 3, 3]), [0, 1]), /dilation must be two integers >= 1/);
    assert.throws(() => call(t.to(t.randn([1, 4, 5, 5]), 'float64'), t.randn([4, 1, 3, 3])), /must be float32/);
  });
});

test('ConvMixer (shared kernels) trains the same through the kshare kernel and through libtorch, without leaks', () => {
  const train = (native: boolean) =>
    withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0' }, () => {
      t.manualSeed(3);
      const m = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
      const x = t.randn([2, 3, 32, 32]);
      const y = t.tensor(BigInt64Array.from([1, 7], BigInt), [2]);
      const step = () =>
        t.tidy(() => {
          const l = t.crossEntropy(m.train(true).forward(x), y);
          l.backward();
          return l.item();
        });
      const loss = step();
      const live = t.liveTensors();
      step(); // gradients accumulate into the same tensors: nothing new stays alive
      assert.equal(t.liveTensors(), live, 'a second step leaves no tensors behind');
      const grads = m.parameters().map((p) => p.grad!.toFloat32Array());
      m.dispose();
      t.dispose([x, y]);
      return { loss, grads };
    });
  const a = train(true),
    b = train(false);
  assert.ok(Math.abs(a.loss - b.loss) <= 1e-5 * Math.abs(b.loss), `loss ${a.loss} vs ${b.loss}`);
  // A whole model compounds each kernel's float32 rounding over its layers (every kernel is held
  // to 1e-5 above), so the model-level tolerance applies, as in the model parity tests.
  a.grads.forEach((g, i) => {
    for (let j = 0; j < g.length; j++) if (Number.isNaN(g[j]!)) assert.fail(`parameter ${i} grad: element ${j} is NaN`);
    const e = maxRelError(g, b.grads[i]!);
    assert.ok(e <= MODEL_TOL, `parameter ${i} grad: relative error ${e.toExponential(2)} > ${MODEL_TOL}`);
  });
});

// Where kshare's own 1x1 operator is built (native/pointwise_conv.cc, oneDNN headers), it takes
// every 1x1 convolution (test/pointwise-conv.test.ts); this route is the fallback for builds
// without it, which KSHARE_NATIVE_POINTWISE=0 selects here.
test('1x1 convolutions at small batch go to oneDNN for inference only, matching libtorch conv2d', () => {
  withEnv({ KSHARE_NATIVE_POINTWISE: '0' }, () => {
    t.tidy(() => {
      const x = t.randn([2, 64, 32, 32]), // 12.6M multiply-adds: above the threshold
        w = t.randn([96, 64, 1, 1]),
        b = t.randn([96]);
      const direct = wrap(runKernel('test', 'mkldnnConv2d', [x.handle, w.handle, b.handle, [0, 0], [1, 1], [1, 1], 1]));
      const libtorch = withLibtorchOps<Tensor>;
      const ref = libtorch(() => t.noGrad(() => t.conv2d(x, w, b)));
      // Routed: bit-identical to the direct oneDNN call, and within float32 rounding of libtorch's choice.
      const routed = t.noGrad(() => t.conv2d(x, w, b));
      assert.deepEqual(routed.toFloat32Array(), direct.toFloat32Array());
      assertClose('oneDNN 1x1 vs libtorch conv2d', routed.toFloat32Array(), ref.toFloat32Array());
      // Recording gradients, batch 16 or more, or too small a problem: libtorch's own conv2d.
      const wg = w.detach();
      wg.requiresGrad = true;
      assert.deepEqual(t.conv2d(x, wg, b).toFloat32Array(), libtorch(() => t.conv2d(x, wg, b)).toFloat32Array(), 'with gradients');
      const big = t.randn([16, 64, 16, 32]);
      assert.deepEqual(t.noGrad(() => t.conv2d(big, w, b)).toFloat32Array(), libtorch(() => t.noGrad(() => t.conv2d(big, w, b))).toFloat32Array(), 'batch 16');
      const small = t.randn([1, 8, 4, 4]),
        ws = t.randn([8, 8, 1, 1]);
      assert.deepEqual(t.noGrad(() => t.conv2d(small, ws)).toFloat32Array(), libtorch(() => t.noGrad(() => t.conv2d(small, ws))).toFloat32Array(), 'small');
    });
  });
});
