// The ONNX exporter's output as a file: schema round trip, one initializer per shared kernel,
// BatchNorm kept as separate nodes, file sizes, float16 storage, and clear errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';
import { Module } from '../src/nn/module.js';
import { Sequential } from '../src/nn/container.js';
import { BatchNorm2d } from '../src/nn/batchnorm.js';
import { Conv2d } from '../src/nn/conv.js';
import { exportOnnx, writeOnnxFile } from '../src/export/export-onnx.js';
import { decodeModel, encodeModel, OnnxDataType, type ModelProto } from '../src/export/onnx-schema.js';
import { sharedConvWeights, summarizeOnnx } from '../src/export/onnx-inspect.js';
import { infoFromModel } from '../src/export/model-info.js';
import { modelFromRegistry } from '../src/export/model-source.js';
import { OPSET } from '../src/export/onnx-graph.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

function exportByName(name: string, fp16 = false): { proto: ModelProto; bytes: Uint8Array; params: number; bnCount: number; convCount: number } {
  t.manualSeed(0);
  const src = modelFromRegistry(name);
  try {
    const { bytes } = exportOnnx(src.model, src.info, { fp16 });
    const mods = src.model.modules();
    return {
      proto: decodeModel(bytes),
      bytes,
      params: src.info.params,
      bnCount: mods.filter((m) => m instanceof BatchNorm2d).length,
      convCount: mods.filter((m) => m instanceof Conv2d).length,
    };
  } finally {
    src.model.dispose();
  }
}

test('a shared ConvMixer exports with one initializer per shared kernel, used by every block', () => {
  const { proto, params, bnCount, convCount } = exportByName('convmixer_64_4_k5_p2_shared');
  const s = summarizeOnnx(proto);
  assert.equal(proto.opsetImport[0]!.version, OPSET);
  assert.ok(OPSET >= 17);
  assert.equal(s.opCounts.Conv, convCount, 'one Conv node per Conv2d layer');
  assert.equal(s.opCounts.BatchNormalization, bnCount, 'every BatchNorm is its own node (not folded into a kernel)');
  // 4 blocks: the depthwise kernel and the pointwise kernel are each one initializer with 4 users.
  assert.deepEqual(
    s.sharedKernels.map((k) => [k.initializer, k.nodes.length]),
    [
      ['3.0.fn.0.weight', 4],
      ['3.1.weight', 4],
    ],
  );
  const names = proto.graph.initializer.map((i) => i.name);
  assert.equal(new Set(names).size, names.length, 'initializer names are unique');
  for (const alias of ['4.0.fn.0.weight', '5.1.weight', '6.0.fn.0.bias']) assert.ok(!names.includes(alias), `${alias} is not stored again`);
  // The shared biases are shared too: every depthwise Conv names the same bias.
  const dwBiases = new Set(
    proto.graph.node.filter((n) => n.opType === 'Conv' && n.attribute!.some((a) => a.name === 'group' && a.i! > 1)).map((n) => n.input[2]),
  );
  assert.deepEqual([...dwBiases], ['3.0.fn.0.bias']);
  // Stored floats = trainable parameters: BN's running statistics are folded into its own scale/shift.
  const floats = proto.graph.initializer.filter((i) => i.dataType === OnnxDataType.FLOAT && i.dims.length > 0 && !/^(zeros|ones)_/.test(i.name));
  assert.equal(
    floats.reduce((n, i) => n + i.dims.reduce((a, b) => a * b, 1), 0),
    params,
  );
  const info = infoFromModel(proto, 'test');
  assert.equal(info.model, 'convmixer_64_4_k5_p2_shared');
  assert.equal(info.params, params);
  assert.equal(info.classes.length, 10);
  assert.equal(info.classes[3], 'cat');
});

test('SE-ResNet d=2 shared: each stage kernel is one initializer for 3 convs, each followed by its own BatchNorm', () => {
  const { proto } = exportByName('se_resnet_d_2_full_shared');
  const shared = sharedConvWeights(proto);
  assert.deepEqual(
    shared.map((k) => [k.initializer, k.nodes.length]),
    [
      ['layer1.0.conv2.weight', 3],
      ['layer2.0.conv2.weight', 3],
      ['layer3.0.conv2.weight', 3],
    ],
  );
  const consumers = (v: string) => proto.graph.node.filter((n) => n.input.includes(v));
  for (const k of shared) {
    for (const conv of proto.graph.node.filter((n) => n.opType === 'Conv' && n.input[1] === k.initializer)) {
      const next = consumers(conv.output[0]!);
      assert.equal(next.length, 1);
      assert.equal(next[0]!.opType, 'BatchNormalization', `${conv.name} feeds a separate BatchNormalization`);
    }
  }
  const { proto: unshared } = exportByName('se_resnet_d_2');
  assert.equal(sharedConvWeights(unshared).length, 0);
  assert.equal(unshared.graph.node.filter((n) => n.opType === 'Conv').length, proto.graph.node.filter((n) => n.opType === 'Conv').length);
});

test('file sizes: ConvMixer-256/16 shared is about its unique weight bytes (~0.43 MB), unshared ~5.6 MB', () => {
  const shared = exportByName('convmixer_256_16_shared');
  const unshared = exportByName('convmixer_256_16');
  assert.equal(shared.params, 107_274);
  assert.equal(unshared.params, 1_409_034);
  const sharedWeightBytes = shared.params * 4;
  // Everything beyond the weights (graph structure, names, metadata) stays small.
  assert.ok(
    shared.bytes.byteLength >= sharedWeightBytes && shared.bytes.byteLength < sharedWeightBytes * 1.08,
    `shared file ${shared.bytes.byteLength} B vs weights ${sharedWeightBytes} B`,
  );
  assert.ok(
    unshared.bytes.byteLength >= unshared.params * 4 && unshared.bytes.byteLength < unshared.params * 4 * 1.01,
    `unshared file ${unshared.bytes.byteLength} B`,
  );
  assert.ok(Math.abs(shared.bytes.byteLength / 1e6 - 0.45) < 0.03);
  assert.ok(Math.abs(unshared.bytes.byteLength / 1e6 - 5.65) < 0.1);
  // fp16 halves the weights; one Cast per stored tensor, not per use.
  const half = exportByName('convmixer_256_16_shared', true);
  const weights16 = half.proto.graph.initializer.filter((i) => i.dataType === OnnxDataType.FLOAT16);
  assert.equal(
    weights16.reduce((n, i) => n + i.rawData!.length, 0),
    shared.params * 2,
  );
  assert.equal(half.proto.graph.node.filter((n) => n.opType === 'Cast').length, weights16.length);
  assert.deepEqual(
    sharedConvWeights(half.proto).map((k) => k.nodes.length),
    [16, 16],
  );
  assert.ok(half.bytes.byteLength < shared.bytes.byteLength * 0.6);
});

test('the written file round-trips through the schema unchanged', () => {
  const { bytes } = exportByName('convmixer_64_4_k5_p2_shared');
  const again = encodeModel(decodeModel(bytes));
  assert.deepEqual(Buffer.from(again), Buffer.from(bytes));
});

test('writeOnnxFile is atomic: no temporary file is left, and the target is complete', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-export-'));
  try {
    const { bytes } = exportByName('convmixer_64_4_k5_p2');
    const file = path.join(dir, 'sub', 'm.onnx');
    writeOnnxFile(file, bytes);
    assert.deepEqual(readdirSync(path.dirname(file)), ['m.onnx']);
    assert.deepEqual(readFileSync(file), Buffer.from(bytes));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad input: corrupt ONNX bytes, unknown layers and non-finite weights give clear errors', () => {
  const { bytes } = exportByName('convmixer_64_4_k5_p2_shared');
  assert.throws(() => decodeModel(bytes.subarray(0, 1000), 'cut.onnx'), /cut\.onnx is not a valid ONNX file/);
  assert.throws(() => decodeModel(new TextEncoder().encode('hello, not a model'), 'text.onnx'), /text\.onnx is not a valid ONNX file/);
  assert.throws(() => decodeModel(new Uint8Array(0), 'empty.onnx'), /empty\.onnx is not a valid ONNX file/);

  class Mystery extends Module {
    forward(x: t.Tensor): t.Tensor {
      return t.cumsum(x, 1);
    }
  }
  const info = { model: 'm', classes: ['a', 'b'], params: 0, input: { channels: 3, height: 32, width: 32, mean: [0, 0, 0], std: [1, 1, 1] } };
  const mystery = new Sequential(new Conv2d(3, 2, 1), new Sequential(new Mystery()));
  assert.throws(
    () => exportOnnx(mystery, info),
    /cannot export op 'cumsum' \(libtorch aten::cumsum\) in layer '1\.0' \(Mystery\): the ONNX exporter has no mapping for this op/,
  );
  // The failed trace leaves the model as it was: training flags back, forward methods its own.
  mystery.train();
  assert.throws(() => exportOnnx(mystery, info), /no mapping/);
  assert.ok(mystery.modules().every((m) => m.training && !Object.prototype.hasOwnProperty.call(m, 'forward')));
  assert.ok(!t.isTracing());
  mystery.dispose();

  const conv = new Conv2d(3, 2, 1);
  t.noGrad(() => t.fill_(conv.weight, Number.NaN));
  assert.throws(() => exportOnnx(new Sequential(conv), info), /weight '0\.weight' holds a non-finite value/);
  const big = new Conv2d(3, 2, 1);
  t.noGrad(() => t.fill_(big.weight, 1e6));
  assert.throws(() => exportOnnx(new Sequential(big), info, { fp16: true }), /does not fit float16/);
  conv.dispose();
  big.dispose();
});

test('kshare export CLI: --model writes a model; missing or conflicting options fail with one clear line', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-export-cli-'));
  try {
    const out = path.join(dir, 'm.onnx');
    const ok = spawnSync(process.execPath, [CLI, 'export', '--model', 'convmixer_64_4_k5_p2_shared', '--out', out, '--classes', '100'], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /trainable parameters\s+14,308\n/);
    const proto = decodeModel(readFileSync(out));
    const info = infoFromModel(proto, out);
    assert.equal(info.classes.length, 100);
    assert.equal(proto.graph.output[0]!.type!.tensorType!.shape!.dim[1]!.dimValue, 100);

    const cases: [string[], RegExp][] = [
      [['export', '--out', out], /exactly one of --checkpoint <file> or --model <name>/],
      [['export', '--model', 'no_such_model', '--out', out], /unknown model 'no_such_model'/],
      [['export', '--model', 'convmixer_64_4_k5_p2', '--out', path.join(dir, 'm.txt')], /should name a \.onnx file/],
      [['export', '--checkpoint', path.join(dir, 'missing.safetensors'), '--out', out], /no such file/],
    ];
    for (const [args, msg] of cases) {
      const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
      assert.equal(r.status, 1, `${args.join(' ')} should fail`);
      assert.match(r.stderr, msg);
      assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
    }
    const bad = path.join(dir, 'bad.safetensors');
    writeFileSync(bad, 'not a safetensors file at all');
    const r = spawnSync(process.execPath, [CLI, 'export', '--checkpoint', bad, '--out', out], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /bad\.safetensors/);
    assert.ok(existsSync(out), 'a failed export leaves the earlier file alone');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
