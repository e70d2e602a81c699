// A run of ConvMixer blocks in training as one operator (native/conv_gelu_bn.cc,
// t.convMixerTrainingBlocks, routed from Sequential): bit for bit the block operator a block
// (convmixer_block, which fused-gelu-bn and conv-gelu-bn tests check against libtorch and
// python3-torch) for the loss, every gradient and the running stats, at 1 and 2 threads, with
// outputs poisoned, shared and separate kernels, odd shapes and batch 1; the lazily held block
// outputs and the row-sum hand-offs counted (so a run that quietly stored its outputs fails);
// the portable kernels' fall-back; the errors for bad arguments; and, for every fused route,
// the gradients of a model with some parameters frozen.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { applySharingPlan, Conv2d, Sequential, type Module } from '../src/nn/index.js';
import { withEnv, withLibtorchOps, withThreads } from './helpers/env.js';
import { maxRelError } from './helpers/python.js';

const BUILT = t.runtimeInfo().pointwiseKernel; // built with oneDNN, as the 1x1 operator
const skip = !BUILT && 'built without oneDNN: no 1x1 operator, no block run';

interface StepResult {
  loss: number;
  /** Each parameter's gradient, null where it has none. */
  grads: Map<string, Float32Array | null>;
  stats: Map<string, Float32Array>;
  lazy: number;
  handOffs: number;
  deferred: number;
}

interface StepOptions {
  /** t.manualSeed before `make` builds the model; the data's own generator seed. */
  seed: number;
  dataSeed: number;
  batch: number;
  hw: number;
  /** Set for the backward only. */
  backwardEnv?: Record<string, string>;
}

/** One training step (10 classes) of the model `make` builds, everything it produces read back. */
function trainStep(make: () => Module, o: StepOptions): StepResult {
  const live = t.liveTensors();
  t.manualSeed(o.seed);
  const model = make();
  const gen = new t.Generator(o.dataSeed);
  const x = t.randn([o.batch, 3, o.hw, o.hw], { generator: gen });
  const y = t.randint(0, 10, [o.batch], { generator: gen });
  const before = t.runtimeInfo();
  try {
    model.train(true);
    const loss = t.tidy(() => {
      const l = t.crossEntropy(model.forward(x), y);
      withEnv(o.backwardEnv ?? {}, () => l.backward());
      return l.item();
    });
    const after = t.runtimeInfo();
    const grads = new Map<string, Float32Array | null>();
    for (const [k, p] of model.namedParameters())
      grads.set(
        k,
        t.tidy(() => p.grad?.toFloat32Array() ?? null),
      );
    const stats = new Map<string, Float32Array>();
    for (const [k, b] of model.namedBuffers()) if (b.dtype === 'float32') stats.set(k, b.toFloat32Array());
    return {
      loss,
      grads,
      stats,
      lazy: after.blockRunLazyInputs - before.blockRunLazyInputs,
      handOffs: after.blockRunRowSumHandOffs - before.blockRunRowSumHandOffs,
      deferred: after.blockRunDeferredOutputs - before.blockRunDeferredOutputs,
    };
  } finally {
    model.zeroGrad();
    model.dispose();
    t.dispose([x, y]);
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  }
}

/** A training step of the registry model `name`; `backwardEnv` is set for the backward only. */
function step(name: string, batch: number, hw: number, backwardEnv: Record<string, string> = {}): StepResult {
  return trainStep(() => createModel(name, { classes: 10 }), { seed: 11, dataSeed: 3, batch, hw, backwardEnv });
}

/** Options of one ConvMixer block of c channels (3x3 depthwise), its conv weights from `weight`, every BatchNorm training. */
function blockOf(c: number, weight: (shape: number[]) => t.Tensor): t.ConvMixerBlockOptions {
  const bn = () => ({ weight: t.ones([c]), bias: t.zeros([c]), runningMean: t.zeros([c]), runningVar: t.ones([c]), training: true });
  return { dwWeight: weight([c, 1, 3, 3]), dwBias: t.zeros([c]), bn1: bn(), pwWeight: weight([c, c, 1, 1]), pwBias: t.zeros([c]), bn2: bn() };
}

function assertSame(label: string, got: StepResult, ref: StepResult): void {
  assert.equal(got.loss, ref.loss, `${label}: loss`);
  assert.deepEqual([...got.grads.keys()], [...ref.grads.keys()], `${label}: the same parameters`);
  for (const [k, g] of ref.grads) assert.deepEqual(got.grads.get(k), g, `${label}: gradient of ${k}`);
  for (const [k, s] of ref.stats) assert.deepEqual(got.stats.get(k), s, `${label}: buffer ${k}`);
}

// name, batch, image size: ConvMixer-<dim>/<depth> with kernel k and patch p.
const MODELS: [string, number, number][] = [
  ['convmixer_24_3_k5_p2_shared', 4, 16], // shared kernels: the run sums their gradients itself
  ['convmixer_17_3_k3_p2', 3, 14], // separate kernels, 17 channels (not a vector width), 7x7 planes
  ['convmixer_16_2_k7_p1_shared_dw', 2, 9], // only the depthwise kernel shared, odd planes
  ['convmixer_32_4_k9_p4', 1, 20], // batch 1 (fewer images than threads: no in-block hand-off)
];

test("a training run of ConvMixer blocks gives the block operator's numbers bit for bit, outputs held lazily", { skip }, () => {
  for (const [name, batch, hw] of MODELS) {
    const depth = Number(name.split('_')[2]);
    for (const threads of [1, 2]) {
      withThreads(threads, () =>
        withEnv({ KSHARE_NATIVE_POISON: '1' }, () => {
          const blocks = withEnv({ KSHARE_NATIVE_TRAINING_RUN: '0' }, () => step(name, batch, hw));
          const run = step(name, batch, hw);
          const label = `${name} batch ${batch}, ${threads} thread(s)`;
          assert.equal(blocks.lazy, 0, `${label}: no run with KSHARE_NATIVE_TRAINING_RUN=0`);
          assertSame(label, run, blocks);
          // Every block after the first reads its input lazily, and every block but the last
          // hands its 1x1 BatchNorm's row sums to the block before.
          assert.equal(run.lazy, depth - 1, `${label}: blocks with a lazily held input`);
          assert.equal(run.handOffs, depth - 1, `${label}: row-sum hand-offs`);
          // Every block's residual-half output is written image by image as the 1x1 reads it
          // (poisoned: an image left unwritten would show in the gradients).
          assert.equal(run.deferred, depth, `${label}: outputs written as the 1x1 reads them`);
          assert.equal(blocks.deferred, 0, `${label}: none without the run`);
        }),
      );
    }
  }
});

test('a training run on the portable kernels stores every block output and gives the same numbers', { skip }, () => {
  withEnv({ KSHARE_NATIVE_ISA: 'generic' }, () => {
    const blocks = withEnv({ KSHARE_NATIVE_TRAINING_RUN: '0' }, () => step('convmixer_16_3_k5_p2_shared', 2, 12));
    const run = step('convmixer_16_3_k5_p2_shared', 2, 12);
    assertSame('portable kernels', run, blocks);
    assert.equal(run.lazy, 0, 'the portable rows round a * b + c twice: no lazily held input');
    assert.equal(run.handOffs, 0);
  });
});

test("the depthwise route switched between a training run's forward and its backward: the block operators' numbers, and libtorch's", { skip }, () => {
  // KSHARE_NATIVE_DEPTHWISE_FORWARD is read at every call. The forward decides which block inputs
  // are held lazily; a backward on oneDNN's input gradient must still read them through their
  // affine (and sum the row sums itself, since no planes come from the plane kernel); the row sums
  // are handed over only from a lazily held input's planes.
  const [name, batch, hw] = MODELS[0]!;
  const depth = Number(name.split('_')[2]);
  const CASES: [string, Record<string, string>, Record<string, string>, number, number][] = [
    ['forward on the plane kernel, backward on oneDNN', {}, { KSHARE_NATIVE_DEPTHWISE_FORWARD: 'onednn' }, depth - 1, 0],
    ['forward on oneDNN, backward on the plane kernel', { KSHARE_NATIVE_DEPTHWISE_FORWARD: 'onednn' }, { KSHARE_NATIVE_DEPTHWISE_FORWARD: 'kshare' }, 0, 0],
  ];
  for (const threads of [1, 2]) {
    withThreads(threads, () => {
      const ref = withLibtorchOps(() => step(name, batch, hw));
      for (const [what, forwardEnv, backwardEnv, lazy, handOffs] of CASES) {
        const label = `${what}, ${threads} thread(s)`;
        withEnv({ ...forwardEnv, KSHARE_NATIVE_POISON: '1' }, () => {
          const blocks = withEnv({ KSHARE_NATIVE_TRAINING_RUN: '0' }, () => step(name, batch, hw, backwardEnv));
          const run = step(name, batch, hw, backwardEnv);
          assertSame(label, run, blocks);
          assert.equal(run.lazy, lazy, `${label}: blocks with a lazily held input`);
          assert.equal(run.handOffs, handOffs, `${label}: row-sum hand-offs`);
          for (const [k, r] of ref.grads) {
            const err = maxRelError(run.grads.get(k)!, r!);
            assert.ok(err < 1e-5, `${label}: gradient of ${k} off libtorch's by ${err}`);
          }
        });
      }
    });
  }
});

test('a training run is not taken without gradients, in eval mode, or with KSHARE_NATIVE_BLOCK_NODE=0', { skip }, () => {
  const live = t.liveTensors();
  const model = createModel('convmixer_16_3_k5_p2_shared', { classes: 10 });
  const x = t.randn([2, 3, 12, 12], { generator: new t.Generator(1) });
  const lazy = (fn: () => void) => {
    const before = t.runtimeInfo().blockRunLazyInputs;
    t.tidy(fn);
    return t.runtimeInfo().blockRunLazyInputs - before;
  };
  try {
    model.train(true);
    assert.equal(
      lazy(() => t.sum(model.forward(x)).backward()),
      2,
      'training with gradients: the run',
    );
    assert.equal(
      lazy(() => {
        t.noGrad(() => model.forward(x));
      }),
      0,
      'training without gradients: block by block',
    );
    assert.equal(
      withEnv({ KSHARE_NATIVE_BLOCK_NODE: '0' }, () => lazy(() => t.sum(model.forward(x)).backward())),
      0,
      'KSHARE_NATIVE_BLOCK_NODE=0 compares the halves: no run either',
    );
    model.eval();
    assert.equal(
      lazy(() => t.sum(model.forward(x)).backward()),
      0,
      'eval mode: block by block',
    );
  } finally {
    model.zeroGrad();
    model.dispose();
    x.dispose();
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test(
  'built without oneDNN, the block operators say what the build lacks, and a ConvMixer still trains (block halves)',
  { skip: BUILT && 'built with oneDNN (`npm run test:no-onednn` runs this)' },
  () => {
    t.tidy(() => {
      const c = 8;
      const y = t.zeros([2, c, 4, 4]);
      const block = () => blockOf(c, (shape) => t.ones(shape));
      assert.throws(
        () => t.convMixerTrainingBlocks(y, [block(), block()]),
        /convMixerTrainingBlocks: kshare::convmixer_training_blocks is not in this build .*needs oneDNN/,
      );
      assert.throws(() => t.convMixerBlock(y, block()), /convMixerBlock: kshare::convmixer_block is not in this build .*libdnnl-dev/);
    });
    const r = trainStep(() => createModel('convmixer_8_2_k3_p2_shared', { classes: 10 }), { seed: 5, dataSeed: 5, batch: 2, hw: 8 });
    assert.ok(Number.isFinite(r.loss), `loss ${r.loss}`);
    for (const [k, g] of r.grads) assert.ok(g, `${k} has a gradient`);
  },
);

test('convMixerTrainingBlocks refuses bad arguments with errors that name them', { skip }, () => {
  t.tidy(() => {
    const c = 8;
    const gen = new t.Generator(4);
    const block = () => blockOf(c, (shape) => t.randn(shape, { generator: gen }));
    const x = t.randn([2, c, 6, 6], { generator: gen });
    const a = block(),
      b = block();
    assert.throws(() => t.convMixerTrainingBlocks(x, []), /blocks must be a non-empty array/);
    assert.throws(() => t.convMixerTrainingBlocks(x, [a, { ...b, dilation: [2, 2] }]), /block 1.*same dilation/);
    assert.throws(() => t.convMixerTrainingBlocks(x, [a, { ...b, bn2: { ...b.bn2, training: false } }]), /block 1.*'bn2' must be in training mode/);
    assert.throws(() => t.convMixerTrainingBlocks(x, [a, { ...b, pwWeight: t.randn([c + 1, c, 1, 1]) }]), /block 1.*'pwWeight' must be \[8, 8, 1, 1\]/);
    assert.throws(() => t.convMixerTrainingBlocks(x, [a, { ...b, dwWeight: t.randn([c, 1, 2, 2]) }]), /block 1.*'dwWeight' must be \[8, 1, kh, kw\] with odd/);
    assert.throws(() => t.convMixerTrainingBlocks(t.contiguous(x, 'channels_last'), [a, b]), /NCHW contiguous/);
    // What it computes: the two blocks one after the other.
    const run = t.convMixerTrainingBlocks(x, [a, b]).toFloat32Array();
    const ref = t.convMixerBlock(t.convMixerBlock(x, a), b).toFloat32Array();
    assert.deepEqual(run, ref);
  });
});

// ---- partly frozen models: every route gives the gradients libtorch's ops give ----

/** A training step with `frozen` parameters not requiring grad: each trainable parameter's gradient (null if none). */
function frozenStep(frozen: readonly string[]): Map<string, Float32Array | null> {
  const make = () => {
    const model = createModel('convmixer_16_2_k3_p2_shared', { classes: 10 });
    for (const [k, p] of model.namedParameters()) if (frozen.includes(k)) p.requiresGrad = false;
    return model;
  };
  return trainStep(make, { seed: 21, dataSeed: 8, batch: 4, hw: 12 }).grads;
}

test('with some parameters frozen, every fused route gives the gradients of the rest, as libtorch does', { skip }, () => {
  const FROZEN: [string, string[]][] = [
    ['the conv biases', ['0.bias', '3.0.fn.0.bias', '3.1.bias']],
    ['the 1x1 weight', ['3.1.weight']],
    ['the depthwise weight', ['3.0.fn.0.weight']],
    ['the stem convolution', ['0.weight', '0.bias']],
  ];
  const ROUTES: [string, Record<string, string>][] = [
    ['training run', {}],
    ['block operators', { KSHARE_NATIVE_TRAINING_RUN: '0' }],
    ['half operators', { KSHARE_NATIVE_BLOCK_NODE: '0' }],
  ];
  for (const [what, frozen] of FROZEN) {
    const ref = withLibtorchOps(() => frozenStep(frozen));
    for (const [route, env] of ROUTES) {
      const got = withEnv(env, () => frozenStep(frozen));
      for (const [k, r] of ref) {
        const g = got.get(k)!;
        assert.equal(g === null, r === null, `${what} frozen, ${route}: ${k} ${r === null ? 'has no' : 'has a'} gradient with libtorch's ops`);
        if (g && r) assert.ok(maxRelError(g, r) < 1e-5, `${what} frozen, ${route}: gradient of ${k} off by ${maxRelError(g, r)}`);
      }
    }
  }
});

test('a kernel shared by the run and a layer after it gets both gradients, as libtorch sums them', { skip }, () => {
  // The run sums its blocks' share of the gradient itself and autograd then adds the later
  // layer's, so the association differs from a block node each (last bits), not the value.
  const make = () => {
    const layers = (createModel('convmixer_16_3_k3_p2', { classes: 10 }) as Sequential).layers;
    // stem (3 layers), 3 blocks, then a 1x1 convolution sharing the blocks' 1x1 kernel and bias, then the head.
    const model = new Sequential(...layers.slice(0, 6), new Conv2d(16, 16, 1), ...layers.slice(6));
    applySharingPlan(model, { kind: 'groups', groups: [['3.1', '4.1', '5.1', '6']] });
    return model;
  };
  const step = () => trainStep(make, { seed: 31, dataSeed: 9, batch: 4, hw: 12 });
  for (const threads of [1, 2]) {
    withThreads(threads, () => {
      const ref = withLibtorchOps(step);
      const run = step();
      const blocks = withEnv({ KSHARE_NATIVE_TRAINING_RUN: '0' }, step);
      assert.equal(run.lazy, 2, `${threads} thread(s): the blocks ran as one training run`);
      assert.equal(blocks.lazy, 0);
      assert.ok(ref.grads.has('3.1.weight') && !ref.grads.has('6.weight'), `one shared kernel: ${[...ref.grads.keys()]}`);
      for (const [k, r] of ref.grads) {
        for (const [route, got] of [
          ['training run', run],
          ['block operators', blocks],
        ] as const) {
          const err = maxRelError(got.grads.get(k)!, r!);
          assert.ok(err < 1e-5, `${threads} thread(s), ${route}: gradient of ${k} off libtorch's by ${err}`);
        }
      }
    });
  }
});
