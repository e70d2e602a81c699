// Exported models run in ONNX Runtime (onnxruntime-node, CPU) give kshare's own eval-mode
// outputs: ConvMixer-256/16 and SE-ResNet d=2, shared and unshared, within 1e-4 relative.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { exportOnnx } from '../src/export/export-onnx.js';
import { recommendedSessionOptions } from '../src/export/ort-session.js';
import { prepareImage } from '../src/export/image-input.js';
import { topK } from '../src/export/predict.js';
import { maxRelError } from './helpers/python.js';
import { kshareLogits, preparedModel, randomInput } from './export-fixtures.js';

const SAMPLES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web/samples');
const TOL = 1e-4;

async function ortLogits(bytes: Uint8Array, input: Float32Array, n: number, options: ort.InferenceSession.SessionOptions): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(bytes, options);
  try {
    const out = await session.run({ input: new ort.Tensor('float32', input, [n, 3, 32, 32]) });
    return out.logits!.data as Float32Array;
  } finally {
    await session.release();
  }
}

for (const [name, sharedKernels] of [
  ['convmixer_256_16_shared', 2], ['convmixer_256_16', 0], ['se_resnet_d_2_full_shared', 3], ['se_resnet_d_2', 0],
] as const) {
  test(`${name}: ONNX Runtime matches kshare eval within ${TOL} relative`, async (ctx) => {
    const src = preparedModel(name, 3, { headScale: 4 });
    try {
      // One CIFAR test image (as `kshare predict` prepares it) and one random input.
      const img = prepareImage(readFileSync(path.join(SAMPLES, 'ship.jpg')), src.info.input, 'ship.jpg').input;
      const input = new Float32Array(2 * img.length);
      input.set(img);
      input.set(randomInput(1, 7), img.length);
      const ref = kshareLogits(src.model, input, [2, 3, 32, 32]);
      const { bytes, stats } = exportOnnx(src.model, src.info);
      assert.equal(stats.sharedWeights > 0, sharedKernels > 0);
      for (const [label, options] of [
        ['recommended options', recommendedSessionOptions(sharedKernels, { threads: 1 })],
        ['ONNX Runtime defaults', { intraOpNumThreads: 1 }],
        ['optimisation disabled', { graphOptimizationLevel: 'disabled', intraOpNumThreads: 1 }],
      ] as const) {
        const got = await ortLogits(bytes, input, 2, options as ort.InferenceSession.SessionOptions);
        const err = maxRelError(got, ref);
        ctx.diagnostic(`${label}: max relative error ${err.toExponential(2)}`);
        assert.ok(err < TOL, `${label}: max relative error ${err.toExponential(2)}`);
      }
      // The two inputs give different answers (the comparison is not between constants).
      assert.ok(maxRelError(ref.subarray(0, 10), ref.subarray(10)) > 1e-2);
    } finally {
      src.model.dispose();
    }
  });
}

test('float16 storage: the same predictions, logits within 1e-2 relative', async (ctx) => {
  const src = preparedModel('se_resnet_d_2_full_shared', 5, { headScale: 4 });
  try {
    const input = randomInput(2, 11);
    const ref = kshareLogits(src.model, input, [2, 3, 32, 32]);
    const { bytes } = exportOnnx(src.model, src.info, { fp16: true });
    const got = await ortLogits(bytes, input, 2, recommendedSessionOptions(3, { threads: 1 }));
    const err = maxRelError(got, ref);
    ctx.diagnostic(`float16 weights: max relative error ${err.toExponential(2)}`);
    assert.ok(err < 1e-2 && err > 0, `float16 weights: relative error ${err.toExponential(2)}`);
    for (const row of [0, 1]) {
      const a = topK(got.subarray(row * 10, row * 10 + 10), src.info.classes, 1)[0]!;
      const b = topK(ref.subarray(row * 10, row * 10 + 10), src.info.classes, 1)[0]!;
      assert.equal(a.label, b.label);
    }
  } finally {
    src.model.dispose();
  }
});
