// Parity of the fused bias + GELU + BatchNorm kernel (native/fused_gelu_bn.cc) against
// libtorch's own ops in this process and against python3-torch: forward, the gradients of the
// input, the conv bias and the BN weight and bias, and the running statistics afterwards, on
// NCHW and channels-last inputs, training and eval, both the AVX2 and the portable code path.
// Outputs are poisoned with NaN before the kernel writes them (KSHARE_NATIVE_POISON), so an
// element it leaves unwritten fails the comparison.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { runPython, encodeTensors, decodeF32, maxRelError, type Encoded } from './helpers/python.js';
import { importInChild, withEnv } from './helpers/env.js';

const TOL = 1e-5;
const OUTPUTS = ['y', 'x.grad', 'bias.grad', 'weight.grad', 'bnBias.grad', 'runningMean', 'runningVar'] as const;

interface Case {
  shape: [number, number, number, number];
  channelsLast: boolean;
  training: boolean;
  momentum: number;
}

const SHAPES: [number, number, number, number][] = [
  [1, 5, 3, 7], // batch 1, odd widths
  [2, 8, 6, 6],
  [3, 17, 5, 5], // channels not a multiple of the vector width
  [4, 9, 1, 1], // 1x1 spatial (both layouts at once)
  [2, 64, 9, 11],
  [1, 3, 13, 1],
  [6, 33, 4, 3],
];

function cases(): Case[] {
  const out: Case[] = [];
  for (const shape of SHAPES)
    for (const channelsLast of [false, true])
      for (const training of [true, false]) {
        out.push({ shape, channelsLast, training, momentum: training ? 0.1 + 0.05 * (out.length % 4) : 0.1 });
      }
  return out;
}

interface Inputs {
  x: Tensor;
  bias: Tensor;
  weight: Tensor;
  bnBias: Tensor;
  runningMean: Tensor;
  runningVar: Tensor;
  r: Tensor;
}

function inputs(c: Case, seed: number): Inputs {
  const gen = new t.Generator(seed);
  const [, ch] = c.shape;
  return t.tidy(() => ({
    // Spread around 0 so GELU's curved part and both tails are exercised.
    x: t.keep(t.randn(c.shape, { generator: gen }).mul(2)),
    bias: t.keep(t.randn([ch], { generator: gen }).mul(0.5)),
    weight: t.keep(t.randn([ch], { generator: gen })),
    bnBias: t.keep(t.randn([ch], { generator: gen })),
    runningMean: t.keep(t.randn([ch], { generator: gen }).mul(0.2)),
    runningVar: t.keep(t.rand([ch], { generator: gen }).add(0.5)),
    r: t.keep(t.randn(c.shape, { generator: gen })),
  }));
}

/** Runs one case through the fused op (fused = true) or libtorch's ops; returns every output as floats. */
function run(c: Case, inp: Inputs, fused: boolean): Float32Array[] {
  const T = t.tidy(() => ({
    // clone first: contiguous() returns the same tensor when it already has the layout (1x1 spatial).
    x: t.keep(c.channelsLast ? t.contiguous(t.clone(inp.x), 'channels_last') : t.clone(inp.x)).requiresGrad_(),
    bias: t.keep(t.clone(inp.bias)).requiresGrad_(),
    weight: t.keep(t.clone(inp.weight)).requiresGrad_(),
    bnBias: t.keep(t.clone(inp.bnBias)).requiresGrad_(),
    runningMean: t.keep(t.clone(inp.runningMean)),
    runningVar: t.keep(t.clone(inp.runningVar)),
  }));
  try {
    return t.tidy(() => {
      const o = {
        weight: T.weight,
        bias: T.bnBias,
        runningMean: T.runningMean,
        runningVar: T.runningVar,
        training: c.training,
        momentum: c.momentum,
        eps: 1e-5,
      };
      const y = fused ? t.biasGeluBatchNorm(T.x, T.bias, o) : t.batchNorm(t.gelu(t.add(T.x, t.reshape(T.bias, [1, c.shape[1], 1, 1]))), o);
      if (fused && c.channelsLast && c.shape[2] * c.shape[3] > 1) assert.ok(t.isContiguous(y, 'channels_last'), 'channels-last in, channels-last out');
      t.sum(t.mul(y, inp.r)).backward();
      return [y, T.x.grad!, T.bias.grad!, T.weight.grad!, T.bnBias.grad!, T.runningMean, T.runningVar].map((v) => v.toFloat32Array());
    });
  } finally {
    t.dispose(Object.values(T));
  }
}

const PY = `
import torch.nn.functional as F
res = []
for c in inp['cases']:
    T = {k: dec(v) for k, v in c['tensors'].items()}
    if c['channels_last']:
        T['x'] = T['x'].contiguous(memory_format=torch.channels_last)
    for k in ['x', 'bias', 'weight', 'bnBias']:
        T[k].requires_grad_(True)
    y = F.batch_norm(F.gelu(T['x'] + T['bias'].view(1, -1, 1, 1)), T['runningMean'], T['runningVar'], T['weight'], T['bnBias'],
                     training=c['training'], momentum=c['momentum'], eps=1e-5)
    (y * T['r']).sum().backward()
    res.append([enc(v) for v in [y, T['x'].grad, T['bias'].grad, T['weight'].grad, T['bnBias'].grad, T['runningMean'], T['runningVar']]])
print(json.dumps(res))
`;

function compare(label: string, got: Float32Array[], ref: Float32Array[], c: Case): void {
  OUTPUTS.forEach((name, i) => {
    // With 2 values per channel, batch norm's input gradient is rounding noise around 0.
    const e = maxRelError(got[i]!, ref[i]!);
    assert.ok(e <= TOL, `${label} [${c.shape}] ${c.channelsLast ? 'channels-last' : 'NCHW'} ${c.training ? 'train' : 'eval'}: ${name} differs by ${e}`);
  });
}

test('fused bias + GELU + BatchNorm matches libtorch and PyTorch: forward, every gradient, running stats', () => {
  const live = t.liveTensors();
  const all = cases();
  const ins = all.map((c, i) => inputs(c, 1000 + i));
  const ref = runPython<Encoded[][]>(PY, {
    cases: all.map((c, i) => ({
      channels_last: c.channelsLast,
      training: c.training,
      momentum: c.momentum,
      tensors: encodeTensors(ins[i]!),
    })),
  });
  let compared = 0;
  // The widest ISA this CPU has (AVX-512 where present), AVX2, and the portable path.
  for (const isa of ['widest', 'avx2', 'generic']) {
    withEnv({ KSHARE_NATIVE_POISON: '1', KSHARE_NATIVE_ISA: isa === 'widest' ? undefined : isa }, () => {
      all.forEach((c, i) => {
        const got = run(c, ins[i]!, true);
        compare(`${isa} vs libtorch`, got, run(c, ins[i]!, false), c);
        compare(`${isa} vs PyTorch`, got, ref[i]!.map(decodeF32), c);
        compared += 2 * OUTPUTS.length;
      });
    });
  }
  assert.ok(compared >= 3 * 2 * 7 * all.length);
  t.dispose(ins.flatMap((v) => Object.values(v)));
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('fused kernel: the demo and paper shapes agree with libtorch (channels-last and NCHW, train and eval)', () => {
  for (const shape of [
    [32, 64, 16, 16],
    [8, 256, 32, 32],
  ] as [number, number, number, number][]) {
    for (const channelsLast of [false, true])
      for (const training of [true, false]) {
        const c: Case = { shape, channelsLast, training, momentum: 0.1 };
        const inp = inputs(c, 7);
        withEnv({ KSHARE_NATIVE_POISON: '1' }, () => compare('large', run(c, inp, true), run(c, inp, false), c));
        t.dispose(Object.values(inp));
      }
  }
});

test('KSHARE_ROW_PREFETCH is read at each call and gives the same numbers at any distance; a bad value fails at import', () => {
  const live = t.liveTensors();
  // Short odd rows (7 floats NCHW, 20 channels-last) take the kernels' tail paths too.
  const all: Case[] = [false, true].map((channelsLast) => ({ shape: [3, 20, 9, 7], channelsLast, training: true, momentum: 0.1 }));
  const ins = all.map((c, i) => inputs(c, 40 + i));
  assert.equal(t.runtimeInfo().rowPrefetchFloats, 512, 'unset: 512 floats ahead');
  const expected = withEnv({ KSHARE_ROW_PREFETCH: '0' }, () => {
    assert.equal(t.runtimeInfo().rowPrefetchFloats, 0, 'KSHARE_ROW_PREFETCH=0 is read at the call');
    return all.map((c, i) => run(c, ins[i]!, true));
  });
  for (const ahead of ['16', '512', '65536'])
    withEnv({ KSHARE_ROW_PREFETCH: ahead, KSHARE_NATIVE_POISON: '1' }, () => {
      assert.equal(t.runtimeInfo().rowPrefetchFloats, Number(ahead), `KSHARE_ROW_PREFETCH=${ahead} is read at the call`);
      all.forEach((c, i) =>
        assert.deepEqual(run(c, ins[i]!, true), expected[i], `KSHARE_ROW_PREFETCH=${ahead}, channels-last ${c.channelsLast}: the same numbers`),
      );
    });
  t.dispose(ins.flatMap((v) => Object.values(v)));
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
  for (const bad of ['-1', '1.5', '65537', 'lots']) {
    const r = importInChild({ KSHARE_ROW_PREFETCH: bad });
    assert.notEqual(r.status, 0, `KSHARE_ROW_PREFETCH=${bad} fails at import`);
    assert.match(r.stderr, new RegExp(`KSHARE_ROW_PREFETCH must be a whole number of floats \\(0 to 65536; default 512\\).* got '${bad.replace('.', '\\.')}'`));
  }
});

test('fused kernel: results do not depend on the number of threads', () => {
  const c: Case = { shape: [4, 24, 10, 10], channelsLast: true, training: true, momentum: 0.1 };
  const inp = inputs(c, 3);
  const before = t.runtimeInfo().numThreads;
  try {
    t.setNumThreads(1);
    const one = run(c, inp, true);
    t.setNumThreads(2);
    const two = run(c, inp, true);
    one.forEach((v, i) => assert.deepEqual(two[i], v, `${OUTPUTS[i]} with 2 threads`));
  } finally {
    t.setNumThreads(before);
    t.dispose(Object.values(inp));
  }
});

test('biasGeluBatchNorm refuses bad arguments with errors that name them', () => {
  t.tidy(() => {
    const x = t.randn([2, 3, 4, 4]);
    const p = () => t.ones([3]);
    const o = { weight: p(), bias: p(), runningMean: p(), runningVar: p(), training: true };
    assert.throws(() => t.biasGeluBatchNorm(t.to(x, 'float64'), p(), o), /biasGeluBatchNorm: 'input' must be a float32 CPU tensor, got float64/);
    assert.throws(() => t.biasGeluBatchNorm(x, t.ones([4]), o), /biasGeluBatchNorm: 'convBias' must have shape \[3\]/);
    assert.throws(() => t.biasGeluBatchNorm(t.randn([2, 3, 4]), p(), o), /input must be \(N, C, H, W\)/);
    assert.throws(() => t.biasGeluBatchNorm(t.randn([1, 3, 1, 1]), p(), o), /more than 1 value per channel/);
    assert.throws(() => t.biasGeluBatchNorm(x, p(), { ...o, training: undefined as unknown as boolean }), /boolean 'training'/);
  });
});

// ---- integration: ConvMixer routes its conv → GELU → BN through the fused kernel ----

/** One training step and one eval forward of a model; every output, gradient and buffer as floats. */
function modelStep(name: string, channelsLast: boolean): Map<string, Float32Array> {
  t.manualSeed(5);
  const model = createModel(name, { classes: 10 });
  try {
    return t.tidy(() => {
      const gen = new t.Generator(9);
      let x = t.randn([3, 3, 32, 32], { generator: gen });
      if (channelsLast) x = t.contiguous(x, 'channels_last');
      const r = t.randn([3, 10], { generator: gen });
      const out = new Map<string, Float32Array>();
      model.train();
      const y = model.forward(x);
      t.sum(t.mul(y, r)).backward();
      out.set('train logits', y.toFloat32Array());
      for (const [k, p] of model.namedParameters()) out.set(`${k}.grad`, p.grad!.toFloat32Array());
      for (const [k, v] of model.stateDict()) if (!k.endsWith('num_batches_tracked')) out.set(k, v.toFloat32Array());
      model.eval();
      out.set('eval logits', t.noGrad(() => model.forward(x)).toFloat32Array());
      for (const [k, v] of model.stateDict()) if (k.endsWith('num_batches_tracked')) out.set(k, Float32Array.of(v.item()));
      return out;
    });
  } finally {
    model.zeroGrad();
    model.dispose();
  }
}

test('ConvMixer uses the fused kernel on CPU float32 and matches the libtorch path (KSHARE_NATIVE_KERNELS=0)', () => {
  const live = t.liveTensors();
  for (const name of ['convmixer_64_4_k5_p2_shared', 'convmixer_64_4_k5_p2']) {
    for (const channelsLast of [false, true]) {
      const fused = modelStep(name, channelsLast);
      const plain = withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => modelStep(name, channelsLast));
      assert.deepEqual([...fused.keys()], [...plain.keys()]);
      let identical = true;
      for (const [k, v] of fused) {
        const e = maxRelError(v, plain.get(k)!);
        assert.ok(e <= 1e-4, `${name}${channelsLast ? ' channels-last' : ''}: ${k} differs from the libtorch path by ${e}`);
        if (k.endsWith('.grad') && e > 0) identical = false;
      }
      // Bit-identical gradients everywhere would mean the fused kernel was not used at all.
      assert.ok(!identical, `${name}: the fused kernel was not used`);
      assert.deepEqual(fused.get('3.0.fn.2.num_batches_tracked'), Float32Array.of(1), 'num_batches_tracked counts the fused step');
    }
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test("ConvMixer under CPU autocast (bfloat16) takes libtorch's path unchanged", () => {
  const run = () => {
    t.manualSeed(2);
    const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
    try {
      return t.tidy(() =>
        t.autocast({ device: 'cpu', dtype: 'bfloat16' }, () => {
          const y = model.forward(t.randn([2, 3, 32, 32]));
          t.sum(y).backward();
          return [y.toFloat32Array(), model.namedParameters()[0]![1].grad!.toFloat32Array()];
        }),
      );
    } finally {
      model.dispose();
    }
  };
  const a = run();
  const b = withEnv({ KSHARE_NATIVE_KERNELS: '0' }, run);
  assert.deepEqual(a, b);
});
