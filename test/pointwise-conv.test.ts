// kshare's 1x1 convolution (native/pointwise_conv.cc: oneDNN's sgemm, or AMX tiles where the CPU
// has them, native/amx_gemm.cc): forward, grad input,
// grad weight and grad bias against libtorch's conv2d in this process and against python3-torch,
// NCHW and channels-last, with outputs poisoned with NaN before the kernel writes them
// (KSHARE_NATIVE_POISON), so an element left unwritten fails; and conv2d's routing of 1x1
// convolutions to it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { runKernel } from '../src/tensor/kernels.js';
import { wrap } from '../src/tensor/tensor.js';
import {
  convGradients,
  compareConv,
  torchConvGradients,
  assertClose as assertCloseTo,
  type ConvCall,
  type ConvData,
  type ConvResult,
} from './helpers/conv-parity.js';
import { withEnv, withLibtorchOps } from './helpers/env.js';

const TOL = 1e-5;
process.env.KSHARE_NATIVE_POISON = '1';
const built = t.runtimeInfo().pointwiseKernel;
const skip = built ? false : 'the addon was built without oneDNN headers (libdnnl-dev): no pointwise operator';

interface Shape {
  n: number;
  c: number;
  out: number;
  h: number;
  w: number;
  bias: boolean;
  cl: boolean;
}

const SHAPES: Shape[] = [
  { n: 2, c: 5, out: 3, h: 7, w: 9, bias: true, cl: false },
  { n: 2, c: 5, out: 3, h: 7, w: 9, bias: true, cl: true },
  { n: 1, c: 64, out: 96, h: 8, w: 8, bias: true, cl: false }, // batch 1
  { n: 3, c: 16, out: 8, h: 1, w: 1, bias: false, cl: false }, // 1x1 images (both formats alike)
  { n: 4, c: 8, out: 24, h: 5, w: 6, bias: false, cl: true },
  { n: 32, c: 64, out: 64, h: 16, w: 16, bias: true, cl: false }, // the demo's ConvMixer block
  { n: 32, c: 64, out: 64, h: 16, w: 16, bias: true, cl: true },
  { n: 2, c: 3, out: 7, h: 13, w: 11, bias: true, cl: true },
  // Batch 1 with a pixel count no panel width divides (panels of 32 and 31 at 2 threads).
  { n: 1, c: 5, out: 3, h: 7, w: 9, bias: true, cl: false },
  { n: 1, c: 5, out: 3, h: 7, w: 9, bias: false, cl: true },
];

const label = (s: Shape) => `(${s.n},${s.c},${s.h},${s.w}) -> ${s.out} ${s.cl ? 'channels-last' : 'NCHW'}${s.bias ? ' +bias' : ''}`;

function makeData(s: Shape, seed: number): ConvData {
  const gen = new t.Generator(seed);
  let x = t.randn([s.n, s.c, s.h, s.w], { generator: gen });
  let r = t.randn([s.n, s.out, s.h, s.w], { generator: gen });
  if (s.cl) {
    x = t.contiguous(x, 'channels_last');
    r = t.contiguous(r, 'channels_last');
  }
  return { x, w: t.randn([s.out, s.c, 1, 1], { generator: gen }), b: s.bias ? t.randn([s.out], { generator: gen }) : null, r };
}

/** conv2d (kshare's operator or libtorch's, per KSHARE_NATIVE_KERNELS), then the gradients of sum(y * r). */
function run(data: ConvData, native: boolean): ConvResult {
  return withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0' }, () => convGradients(data, (x, w, b) => t.conv2d(x, w, b)));
}

const assertClose = (what: string, got: Float32Array, want: Float32Array) => assertCloseTo(what, got, want, TOL);
const compare = (name: string, got: ConvResult, want: Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>) => compareConv(name, got, want, TOL);

test('pointwise conv2d matches libtorch conv2d: forward and every gradient, both memory formats', { skip }, () => {
  SHAPES.forEach((s, i) => {
    const data = makeData(s, 700 + i);
    const fast = run(data, true);
    compare(label(s), fast, run(data, false));
    assert.equal(fast.yChannelsLast, s.cl && s.out > 1 && s.h * s.w > 1, `${label(s)}: output keeps the input's memory format`);
    // Same answer at 2 and 3 threads: the products are split into panels (per image, or per
    // column or row block when there are fewer images than threads) and oneDNN's sgemm splits
    // the work differently.
    const before = t.runtimeInfo().numThreads;
    try {
      for (const threads of [2, 3]) {
        t.setNumThreads(threads);
        compare(`${label(s)} ${threads} threads`, run(data, true), fast);
      }
    } finally {
      t.setNumThreads(before);
    }
    t.dispose(data);
  });
});

// AMX runs where both channel counts are at least 128 (NCHW), the forward from batch 2 (at batch 1
// only the gradients). Sizes that are not multiples of the AMX tiles (16 rows, 32 columns,
// 32-deep) make the zero padding and the edge blocks run.
const AMX_SHAPES: Shape[] = [
  { n: 3, c: 131, out: 129, h: 17, w: 3, bias: true, cl: false },
  { n: 2, c: 256, out: 256, h: 16, w: 16, bias: true, cl: false }, // ConvMixer-256's block
  { n: 1, c: 256, out: 256, h: 32, w: 32, bias: true, cl: false }, // batch 1: gradients on AMX
  { n: 1, c: 160, out: 200, h: 7, w: 9, bias: false, cl: false }, // batch 1, 63 pixels
  { n: 2, c: 140, out: 130, h: 9, w: 15, bias: false, cl: false },
  // More pixels than one packed block (1024): the products go through in blocks of pixels.
  { n: 2, c: 128, out: 130, h: 36, w: 33, bias: true, cl: false },
];
const amxSkip = skip || (t.runtimeInfo().amx ? false : 'this CPU (or OS) has no AMX-BF16: the products run on oneDNN sgemm only');

test('on AMX, the 1x1 products match oneDNN sgemm and libtorch within 1e-5, at 1 and 2 threads', { skip: amxSkip }, () => {
  AMX_SHAPES.forEach((s, i) => {
    const data = makeData(s, 1300 + i);
    const before = t.runtimeInfo();
    const amx = run(data, true);
    const after = t.runtimeInfo();
    assert.ok(after.amxProducts > before.amxProducts, `${label(s)}: the products ran on AMX`);
    // Each product issues at least one tile product a 32 x 32 block of its output, and takes time.
    assert.ok(after.amxTileProducts - before.amxTileProducts >= after.amxProducts - before.amxProducts, `${label(s)}: tile products counted`);
    assert.ok(after.amxProductNs > before.amxProductNs, `${label(s)}: time in the products counted`);
    const sgemm = withEnv({ KSHARE_NATIVE_AMX: '0' }, () => {
      const mark = t.runtimeInfo();
      const r = run(data, true);
      assert.equal(t.runtimeInfo().amxProducts, mark.amxProducts, `${label(s)}: KSHARE_NATIVE_AMX=0 keeps them off AMX`);
      assert.equal(t.runtimeInfo().amxTileProducts, mark.amxTileProducts, `${label(s)}: no tile products counted off AMX`);
      return r;
    });
    compare(`${label(s)} AMX vs sgemm`, amx, sgemm);
    if (i === 0) {
      // Below 128 channels, and in channels-last, the products stay on sgemm.
      for (const small of [
        { ...s, c: 127 },
        { ...s, out: 64 },
        { ...s, cl: true },
      ]) {
        const d = makeData(small, 1400);
        const mark = t.runtimeInfo().amxProducts;
        run(d, true);
        t.dispose(d);
        assert.equal(t.runtimeInfo().amxProducts, mark, `${label(small)}: not on AMX`);
      }
    }
    compare(`${label(s)} AMX vs libtorch`, amx, run(data, false));
    const before2 = t.runtimeInfo().numThreads;
    try {
      t.setNumThreads(2);
      // Each output element is the same sum whatever the split of pixels or channels between
      // threads, so the forward is bit for bit.
      const two = run(data, true);
      assert.deepEqual(two.y, amx.y, `${label(s)}: 2 threads, forward bit for bit`);
      compare(`${label(s)} AMX at 2 threads`, two, amx);
    } finally {
      t.setNumThreads(before2);
    }
    t.dispose(data);
  });
});

test('runtimeInfo counts AMX tile products and their time only where the products run on AMX', { skip }, () => {
  const data = makeData({ n: 2, c: 256, out: 256, h: 16, w: 16, bias: true, cl: false }, 1400);
  const routes = t.runtimeInfo().amx ? [true, false] : [false];
  for (const amx of routes) {
    withEnv(amx ? {} : { KSHARE_NATIVE_AMX: '0' }, () => {
      const before = t.runtimeInfo();
      run(data, true);
      const after = t.runtimeInfo();
      const tiles = after.amxTileProducts - before.amxTileProducts,
        ns = after.amxProductNs - before.amxProductNs;
      // (2, 256, 16, 16): each image's forward product alone is 8 x 8 blocks of 32 x 32 over 8 k
      // tiles, 24 tile products each: 12,288.
      if (amx) assert.ok(tiles >= 2 * 12288 && ns > 0, `on AMX: ${tiles} tile products, ${ns} ns`);
      else assert.ok(tiles === 0 && ns === 0, `off AMX: ${tiles} tile products, ${ns} ns`);
    });
  }
});

test('on AMX, infinities and NaNs come out where sgemm puts them, forward and gradients', { skip: amxSkip }, () => {
  // Non-finite elements exactly; the others within 1e-5 of the largest finite magnitude (as maxRelError).
  const same = (what: string, got: Float32Array, want: Float32Array) => {
    const scale = want.reduce((m, b) => (Number.isFinite(b) ? Math.max(m, Math.abs(b)) : m), 1);
    for (let i = 0; i < got.length; i++) {
      const a = got[i]!,
        b = want[i]!;
      if (!Number.isFinite(b)) assert.ok(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)), `${what} element ${i}: ${a} against ${b}`);
      else assert.ok(Math.abs(a - b) <= 1e-5 * scale, `${what} element ${i}: ${a} against ${b}`);
    }
  };
  // 128 channels each way and batch 2, so all three products run on AMX; in the second case the
  // images are wider than one packed block of 1024 pixels and the first image's infinity is in its
  // second block only, so its first block stays on AMX beside a block that falls back.
  for (const [n, h, w, at] of [
    [2, 6, 6, 5],
    [2, 40, 30, 1100],
  ] as const) {
    const s: Shape = { n, c: 128, out: 130, h, w, bias: true, cl: false };
    const data = makeData(s, 1500 + h);
    const v = data.x.toFloat32Array();
    v[at] = Infinity; // channel 0 of image 0: +-inf in every output channel at that pixel
    v[128 * h * w + 7] = NaN; // a NaN at a pixel of image 1
    v[17] = 1e30; // large but finite: its pieces stay finite
    data.x.dispose();
    data.x = t.tensor(v, [n, 128, h, w]);
    const amx = run(data, true);
    const sgemm = withEnv({ KSHARE_NATIVE_AMX: '0' }, () => run(data, true));
    same(`${label(s)} forward`, amx.y, sgemm.y);
    same(`${label(s)} grad input`, amx.gx, sgemm.gx);
    same(`${label(s)} grad weight`, amx.gw, sgemm.gw);
    assert.ok(amx.y.some((a) => a === Infinity) && amx.y.some((a) => a === -Infinity) && amx.y.some(Number.isNaN), 'the case has all three');
    t.dispose(data);
  }
});

test('pointwise conv2d matches python3-torch', { skip }, () => {
  const cases = SHAPES.map((s, i) => ({
    s,
    data: makeData(s, 900 + i),
    channelsLast: s.cl,
    call: { padding: [0, 0], dilation: [1, 1], groups: 1 } as ConvCall,
  }));
  const ref = torchConvGradients(cases);
  cases.forEach(({ s, data }, i) => {
    compare(`${label(s)} vs python3-torch`, run(data, true), ref[i]!);
    t.dispose(data);
  });
});

test('conv2d routes 1x1 convolutions to the pointwise operator only where it applies', { skip }, () => {
  t.tidy(() => {
    const x = t.randn([2, 16, 6, 6]),
      w = t.randn([8, 16, 1, 1]),
      b = t.randn([8]);
    const direct = wrap(runKernel('test', 'pointwiseConv2d', [x.handle, w.handle, b.handle]));
    assert.deepEqual(t.conv2d(x, w, b).toFloat32Array(), direct.toFloat32Array(), 'routed = the operator, bit for bit');
    const libtorch = (fn: () => Tensor) => withLibtorchOps(fn).toFloat32Array();
    assertClose(
      'KSHARE_NATIVE_KERNELS=0: libtorch',
      libtorch(() => t.conv2d(x, w, b)),
      direct.toFloat32Array(),
    );
    // Not a 1x1 stride-1 unpadded convolution: libtorch's own conv2d, bit for bit.
    for (const [what, o] of [
      ['stride 2', { stride: 2 }],
      ['padding 1', { padding: 1 }],
    ] as const) {
      assert.deepEqual(
        t.conv2d(x, w, b, o).toFloat32Array(),
        libtorch(() => t.conv2d(x, w, b, o)),
        what,
      );
    }
    const wg = t.randn([16, 8, 1, 1]); // groups 2
    assert.deepEqual(
      t.conv2d(x, wg, null, { groups: 2 }).toFloat32Array(),
      libtorch(() => t.conv2d(x, wg, null, { groups: 2 })),
      'groups 2',
    );
    const w3 = t.randn([8, 16, 3, 3]);
    assert.deepEqual(
      t.conv2d(x, w3, b, { padding: 1 }).toFloat32Array(),
      libtorch(() => t.conv2d(x, w3, b, { padding: 1 })),
      '3x3',
    );
    // Under CPU autocast: bfloat16 through libtorch, like conv2d.
    const ac = t.autocast({ device: 'cpu', dtype: 'bfloat16' }, () => t.conv2d(x, w, b));
    assert.equal(ac.dtype, 'bfloat16');
  });
});

test('pointwise operator refuses what it does not support, with the reason', { skip }, () => {
  t.tidy(() => {
    const call = (x: Tensor, w: Tensor, b: Tensor | null = null) => runKernel('test', 'pointwiseConv2d', [x.handle, w.handle, b?.handle ?? null]);
    assert.throws(() => call(t.randn([2, 4, 3, 3]), t.randn([5, 4, 3, 3])), /weight must be \[out, 4, 1, 1\]/);
    assert.throws(() => call(t.randn([2, 4, 3, 3]), t.randn([5, 3, 1, 1])), /weight must be \[out, 4, 1, 1\]/);
    assert.throws(() => call(t.randn([2, 4, 3]), t.randn([5, 4, 1, 1])), /input must be 4-D/);
    assert.throws(() => call(t.randn([2, 4, 3, 3]), t.randn([5, 4, 1, 1]), t.randn([4])), /bias must be a float32 CPU tensor of shape \[5\]/);
    assert.throws(() => call(t.randn([2, 4, 3, 3]).to({ dtype: 'float64' }), t.randn([5, 4, 1, 1]).to({ dtype: 'float64' })), /must be float32/);
  });
});
