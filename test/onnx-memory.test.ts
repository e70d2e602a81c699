// Why kshare's recommended ONNX Runtime options matter: the graph ONNX Runtime builds for a
// session (saved with optimizedModelFilePath) shows whether shared kernels are still one tensor.
// With its default fusions, every Conv followed by a BatchNorm gets its own folded kernel, so
// the shared kernels are copied per layer; with the recommended options they stay one tensor.
// (bench/onnx-memory.ts measures what this costs in resident memory.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import * as t from '../src/tensor/index.js';
import { exportOnnx } from '../src/export/export-onnx.js';
import { modelFromRegistry } from '../src/export/model-source.js';
import { recommendedSessionOptions } from '../src/export/ort-session.js';
import { decodeModel } from '../src/export/onnx-schema.js';
import { sharedConvWeights, tensorBytes } from '../src/export/onnx-inspect.js';

async function sessionGraph(bytes: Uint8Array, options: ort.InferenceSession.SessionOptions, file: string) {
  const session = await ort.InferenceSession.create(bytes, { ...options, intraOpNumThreads: 1, optimizedModelFilePath: file });
  await session.release();
  const m = decodeModel(readFileSync(file), file);
  return { shared: sharedConvWeights(m), weightBytes: m.graph.initializer.reduce((s, i) => s + tensorBytes(i), 0) };
}

test('ONNX Runtime keeps a shared kernel as one tensor only with the recommended options', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-ort-'));
  t.manualSeed(0);
  const src = modelFromRegistry('se_resnet_d_2_full_shared');
  try {
    const { bytes } = exportOnnx(src.model, src.info);
    const fused = await sessionGraph(bytes, { graphOptimizationLevel: 'extended' }, path.join(dir, 'default.onnx'));
    const kept = await sessionGraph(bytes, recommendedSessionOptions(3, { level: 'extended' }), path.join(dir, 'kept.onnx'));
    // Default fusions: no kernel is used by more than one Conv any more (each got a folded copy).
    assert.deepEqual(fused.shared, []);
    assert.deepEqual(
      kept.shared.map((k) => k.nodes.length),
      [3, 3, 3],
    );
    // The copies: 2 extra [C, C, 3, 3] kernels per stage, C = 64, 128, 256.
    const copies = 2 * 4 * 9 * (64 * 64 + 128 * 128 + 256 * 256);
    assert.ok(fused.weightBytes - kept.weightBytes > 0.9 * copies, `session weights ${fused.weightBytes} B vs ${kept.weightBytes} B`);
  } finally {
    src.model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('recommended options leave models without shared kernels at ONNX Runtime defaults', () => {
  assert.equal(recommendedSessionOptions(0).extra, undefined);
  assert.equal(recommendedSessionOptions(0).graphOptimizationLevel, 'all');
  assert.deepEqual(recommendedSessionOptions(2).extra, { optimization: { disable_specified_optimizers: 'ConvBNFusion;ConvAddFusion;ConvMulFusion' } });
});
