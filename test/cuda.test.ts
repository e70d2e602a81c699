// The CUDA path, on a machine with a CUDA libtorch and a GPU (skipped elsewhere, saying why):
// tensors, generators and memory on the device; the paper's models' float32 forward and
// gradients on CUDA against the same model on the CPU; the float16 GradScaler's fused CUDA
// kernels (unscale, overflow, back-off, growth) against the rule the CPU path runs; autocast in
// float16 and bfloat16; and a whole training run on CUDA with a checkpoint resumed on the CPU.
// docs/gpu.md says how to run it on the project's GPU machine (scripts/gpu-run.sh --tests).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { AdamW, GradScaler, scaledStep } from '../src/train/optim/index.js';
import { train } from '../src/train/trainer.js';
import { readCheckpoint } from '../src/train/checkpoint.js';
import { smallRun } from './helpers/small-run.js';
import { maxRelError } from './helpers/python.js';

const info = t.runtimeInfo();
const skip = !info.cudaAvailable && `needs a CUDA device (this libtorch ${info.torchVersion} reports none)`;
const log = (s: string) => process.stdout.write(`# cuda: ${s}\n`);

test('cuda: tensors, seeded generators, the global CUDA stream and memory', { skip }, () => {
  const live = t.liveTensors();
  t.tidy(() => {
    const a = t.randn([64, 33], { device: 'cuda', generator: new t.Generator(5, 'cuda') });
    const b = t.randn([64, 33], { device: 'cuda', generator: new t.Generator(5, 'cuda') });
    assert.equal(a.device, 'cuda:0');
    assert.deepEqual(a.toFloat32Array(), b.toFloat32Array(), 'one seed, one stream');
    const host = a.to('cpu');
    assert.deepEqual(host.to('cuda').toFloat32Array(), host.toFloat32Array(), 'cpu -> cuda -> cpu is exact');
    // A product and a reduction on the device agree with the CPU (TF32 off).
    t.setAllowTF32(false);
    const m = t.matmul(a, t.transpose(a, 0, 1));
    const err = maxRelError(m.toFloat32Array(), t.matmul(host, t.transpose(host, 0, 1)).toFloat32Array());
    assert.ok(err < 1e-5, `matmul on cuda differs from cpu by ${err}`);
    // The global CUDA stream: restoring its state replays the same numbers.
    const state = t.getRngState();
    assert.ok(state.cuda, 'getRngState() holds the CUDA state on a CUDA machine');
    const x = t.rand([1000], { device: 'cuda' }).toFloat32Array();
    t.setRngState(state);
    assert.deepEqual(t.rand([1000], { device: 'cuda' }).toFloat32Array(), x);
    t.dispose([state.cpu, state.cuda]);
  });
  assert.equal(t.liveTensors(), live, 'no tensor left behind');
});

for (const name of ['convmixer_64_4_k5_p2_shared', 'se_resnet_d_2_full_shared']) {
  test(`cuda: ${name} float32 logits, gradients and BatchNorm statistics match the CPU (TF32 off)`, { skip }, () => {
    t.setAllowTF32(false);
    const live = t.liveTensors();
    t.manualSeed(0);
    const cpu = createModel(name, { classes: 10 });
    t.manualSeed(0);
    const gpu = createModel(name, { classes: 10 }).to('cuda');
    try {
      const [x, r] = [t.randn([8, 3, 32, 32]), t.randn([8, 10])];
      const run = (model: typeof cpu, device: string) =>
        t.tidy(() => {
          const y = model.forward(x.to(device));
          t.sum(t.mul(y, r.to(device))).backward();
          return y.toFloat32Array();
        });
      const errY = maxRelError(run(gpu, 'cuda'), run(cpu, 'cpu'));
      let worst = 0;
      const gp = gpu.namedParameters();
      cpu.namedParameters().forEach(([k, p], i) => {
        const [k2, q] = gp[i]!;
        assert.equal(k2, k);
        assert.equal(q.device, 'cuda:0', `${k} on the device`);
        const e = t.tidy(() => maxRelError(q.grad!.toFloat32Array(), p.grad!.toFloat32Array()));
        assert.ok(e < 1e-3, `${name}: gradient of ${k} differs by ${e}`);
        worst = Math.max(worst, e);
      });
      const sdGpu = gpu.stateDict();
      let statErr = 0;
      for (const [k, v] of cpu.stateDict()) {
        if (!k.endsWith('running_mean') && !k.endsWith('running_var')) continue;
        statErr = Math.max(
          statErr,
          t.tidy(() => maxRelError(sdGpu.get(k)!.toFloat32Array(), v.toFloat32Array())),
        );
      }
      log(`${name}: logits ${errY.toExponential(2)}, worst gradient ${worst.toExponential(2)}, BN statistics ${statErr.toExponential(2)}`);
      assert.ok(errY < 1e-4, `${name}: logits differ by ${errY}`);
      assert.ok(statErr < 1e-4, `${name}: running statistics differ by ${statErr}`);
      t.dispose([x, r]);
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
    assert.equal(t.liveTensors(), live);
  });
}

test("cuda: the GradScaler's fused kernels skip an overflowing step, back off, and grow as the CPU rule does", { skip }, () => {
  const live = t.liveTensors();
  const p = t.keep(t.full([4], 1, { device: 'cuda' }));
  p.requiresGrad = true;
  const opt = new AdamW([p], { lr: 0.1 });
  const scaler = new GradScaler({ growthInterval: 2 });
  const stepWith = (g: number) =>
    t.tidy(() => {
      scaler.scale(t.mul(t.sum(p), g)).backward();
      const stepped = scaledStep(scaler, opt, [p], null);
      opt.zeroGrad();
      return stepped;
    });
  const before = p.toFloat32Array();
  assert.equal(stepWith(Infinity), false, 'an inf gradient skips the step');
  assert.deepEqual(p.toFloat32Array(), before, 'a skipped step leaves the weights');
  assert.equal(scaler.getScale(), 2 ** 15, 'backed off by 0.5');
  assert.equal(stepWith(1), true);
  assert.equal(scaler.getScale(), 2 ** 15, 'one clean step: no growth yet');
  assert.equal(stepWith(1), true);
  assert.equal(scaler.getScale(), 2 ** 16, 'two clean steps: grown by 2');
  // The unscaled gradient reached AdamW: its first step moves each weight by lr (sign of 1).
  const after = p.toFloat32Array();
  assert.ok(
    after.every((v) => v < 1 && v > 0.7),
    `weights after two AdamW steps: ${after}`,
  );
  opt.dispose();
  t.dispose(p);
  assert.ok(t.liveTensors() <= live + 8, `live tensors ${t.liveTensors()} (was ${live}; the scaler keeps 3)`);
});

test('cuda: float16 and bfloat16 autocast run the ConvMixer forward in half precision close to float32', { skip }, () => {
  t.manualSeed(1);
  const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 }).to('cuda');
  try {
    t.tidy(() => {
      const x = t.randn([16, 3, 32, 32], { device: 'cuda' });
      const ref = t.noGrad(() => model.forward(x)).toFloat32Array();
      for (const dtype of ['float16', 'bfloat16'] as const) {
        const y = t.autocast({ device: 'cuda', dtype }, () => model.forward(x));
        assert.equal(y.dtype, dtype, `logits under ${dtype} autocast`);
        const err = maxRelError(y.toFloat32Array(), ref);
        log(`autocast ${dtype}: logits within ${err.toExponential(2)} of float32`);
        assert.ok(err < (dtype === 'float16' ? 1e-2 : 5e-2), `${dtype} logits differ by ${err}`);
        t.sum(y.to('float32')).backward();
        for (const [k, p] of model.namedParameters()) assert.equal(p.grad?.dtype, 'float32', `${k}.grad stays float32`);
        model.zeroGrad();
      }
    });
  } finally {
    model.dispose();
  }
});

test('cuda: a training run (float16, AdamW, clipping, Mixup/CutMix) on CUDA, its checkpoint read on the CPU', { skip }, async () => {
  const run = smallRun('cuda', 11);
  const live = t.liveTensors();
  const started = Date.now();
  const summary = await train(run.options('cuda', { device: 'cuda' }));
  log(`small run on cuda: ${((Date.now() - started) / 1000).toFixed(1)} s, status ${summary.status}, best test accuracy ${summary.bestAcc}`);
  assert.equal(run.recipe.amp, true, 'the ConvMixer recipe trains in float16');
  assert.equal(summary.status, 'completed');
  assert.match(summary.device, /^cuda/);
  const file = path.join(run.root, 'cuda', 'checkpoint.safetensors');
  assert.ok(existsSync(file));
  const ckpt = readCheckpoint(file);
  try {
    for (const [k, v] of ckpt.model) {
      assert.equal(v.device, 'cpu', `${k} read onto the CPU`);
      if (v.dtype === 'float32') assert.ok(t.tidy(() => t.all(t.isfinite(v)).item()) === 1, `${k} finite`);
    }
    assert.ok(ckpt.meta.scaler, 'the float16 run saved its GradScaler state');
  } finally {
    ckpt.dispose();
  }
  assert.ok(t.liveTensors() <= live + 2, `live tensors ${t.liveTensors()} after the run (was ${live})`);
});
