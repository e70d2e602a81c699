// safetensors files: every dtype round-trips, shared tensors are stored once with their alias
// names, PyTorch reads our files and we read its, and damaged files fail with clear errors.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { saveSafetensors, loadSafetensors, readSafetensorsHeader, saveWeights, loadWeights, createModel, ALIASES_KEY } from '../src/models/index.js';
import { runPython } from './helpers/python.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'kshare-st-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string) => path.join(dir, name);

/** A safetensors file from a raw header object and data bytes. */
function rawFile(name: string, header: unknown, data: Uint8Array, lengthOverride?: bigint): string {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  const p = file(name);
  writeFileSync(p, Buffer.concat([len, json, data]));
  return p;
}

test('every supported dtype round-trips with shape, values and metadata', () => {
  const live = t.liveTensors();
  const base = t.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const src = new Map<string, t.Tensor>([
    ['f32', t.tensor([1.5, -2, 3.25, 1e-30, -0, 7], [2, 3])],
    ['f16', t.tensor([0.5, -1, 65504], [3], { dtype: 'float16' })],
    ['bf16', t.tensor([1, -3, 1e30], [3], { dtype: 'bfloat16' })],
    ['f64', t.tensor([Math.PI], [1, 1], { dtype: 'float64' })],
    ['i64', t.tensor([-(2 ** 40), 3], [2], { dtype: 'int64' })],
    ['i32', t.tensor([-7, 2 ** 30], [2], { dtype: 'int32' })],
    ['u8', t.tensor([0, 255, 17], [3], { dtype: 'uint8' })],
    ['bool', t.tensor([1, 0, 1], [3], { dtype: 'bool' })],
    ['scalar', t.scalar(42)],
    ['empty', t.zeros([0, 4])],
    ['strided', t.transpose(base, 0, 1)],
  ]);
  const p = file('all.safetensors');
  saveSafetensors(p, src, { note: 'hello', epoch: '3' });
  const { tensors, metadata } = loadSafetensors(p);
  assert.deepEqual(metadata, { note: 'hello', epoch: '3' });
  assert.deepEqual([...tensors.keys()], [...src.keys()]);
  for (const [k, v] of src) {
    const got = tensors.get(k)!;
    assert.equal(got.dtype, v.dtype, k);
    assert.deepEqual(got.shape, v.shape, k);
    assert.deepEqual(got.toArray(), v.toArray(), k);
  }
  assert.deepEqual(tensors.get('strided')!.toArray(), [1, 4, 2, 5, 3, 6]);
  assert.equal(readFileSync(p).readBigUInt64LE() % 8n, 0n, 'header padded to 8 bytes');
  t.dispose([base, ...src.values(), ...tensors.values()]);
  assert.equal(t.liveTensors(), live);
});

test('weights files store each shared tensor once, list aliases, and load back keeping the sharing', () => {
  t.manualSeed(0);
  const shared = createModel('convmixer_64_4_k5_p2_shared');
  const plain = createModel('convmixer_64_4_k5_p2');
  const ps = file('shared.safetensors');
  const pp = file('plain.safetensors');
  saveWeights(shared, ps, { model: 'convmixer_64_4_k5_p2_shared' });
  saveWeights(plain, pp);
  const h = readSafetensorsHeader(ps);
  assert.equal(h.entries.size, new Set(shared.stateDict().values()).size);
  assert.equal(h.entries.size, shared.stateDict().size - 4 * 3, 'four shared tensors, three aliases each');
  const aliases = JSON.parse(h.metadata[ALIASES_KEY]!) as Record<string, string[]>;
  assert.deepEqual(aliases['3.0.fn.0.weight'], ['4.0.fn.0.weight', '5.0.fn.0.weight', '6.0.fn.0.weight']);
  assert.deepEqual(aliases['3.1.bias'], ['4.1.bias', '5.1.bias', '6.1.bias']);
  assert.equal(h.metadata.model, 'convmixer_64_4_k5_p2_shared');
  assert.ok(statSync(ps).size < statSync(pp).size / 2, 'the shared file is much smaller');

  t.manualSeed(1);
  const fresh = createModel('convmixer_64_4_k5_p2_shared');
  const w = fresh.stateDict().get('3.1.weight')!;
  loadWeights(fresh, ps);
  assert.equal(fresh.stateDict().get('5.1.weight'), w, 'still one tensor');
  for (const [k, v] of shared.stateDict()) assert.deepEqual(fresh.stateDict().get(k)!.toArray(), v.toArray(), k);

  // Shared weights are valid unshared weights; distinct per-layer weights cannot become shared.
  loadWeights(plain, ps);
  assert.deepEqual(plain.stateDict().get('6.0.fn.0.weight')!.toArray(), shared.stateDict().get('3.0.fn.0.weight')!.toArray());
  const plain2 = createModel('convmixer_64_4_k5_p2');
  saveWeights(plain2, pp);
  assert.throws(
    () => loadWeights(fresh, pp),
    /does not fit this model: .*'3.0.fn.0.weight' and '4.0.fn.0.weight' name one shared tensor of this model but hold different values/,
  );
  assert.throws(() => saveWeights(shared, ps, { [ALIASES_KEY]: 'x' }), /reserved/);
  for (const m of [shared, plain, plain2, fresh]) m.dispose();
});

test('files that do not fit the model are refused naming the file and the keys', () => {
  const small = createModel('convmixer_64_4_k5_p2');
  const p = file('small.safetensors');
  saveWeights(small, p);
  const other = createModel('convmixer_64_4_k5_p2', { classes: 100 });
  assert.throws(
    () => loadWeights(other, p),
    (e: Error) => e.message.includes(p) && /'9.weight' has shape \[10,64\], the model expects \[100,64\]/.test(e.message),
  );
  const se = createModel('se_resnet_d_2_full_shared');
  assert.throws(() => loadWeights(se, p), /missing keys: 'conv1.weight'.*unexpected keys: '0.weight'/);
  for (const m of [small, other, se]) m.dispose();
});

test('truncated or malformed files fail with clear errors and never allocate beyond the file', () => {
  const x = t.randn([16, 16]);
  const good = file('good.safetensors');
  saveSafetensors(
    good,
    new Map([
      ['x', x],
      ['y', x],
    ]),
  );
  const bytes = readFileSync(good);
  const cut = file('cut.safetensors');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 10));
  assert.throws(
    () => loadSafetensors(cut),
    /cut.safetensors: not a valid safetensors file: tensor 'y' ends at byte 2048 of the data section, which holds 2038 bytes \(truncated\?\)/,
  );
  writeFileSync(cut, bytes.subarray(0, 5));
  assert.throws(() => loadSafetensors(cut), /fewer than the 8-byte header length/);
  writeFileSync(cut, bytes.subarray(0, 40));
  assert.throws(() => loadSafetensors(cut), /the header claims \d+ bytes but the file holds 32/);
  const data = new Uint8Array(16);
  assert.throws(() => loadSafetensors(rawFile('huge-len.safetensors', {}, data, 1n << 62n)), /header claims 4611686018427387904 bytes/);
  // A header claiming a gigantic tensor over 16 bytes: refused before any allocation.
  assert.throws(
    () => loadSafetensors(rawFile('huge-shape.safetensors', { w: { dtype: 'F32', shape: [1e9, 1e9], data_offsets: [0, 16] } }, data)),
    /needs a different byte count than its offsets give \(16\)/,
  );
  assert.throws(
    () => loadSafetensors(rawFile('beyond.safetensors', { w: { dtype: 'F32', shape: [1e9], data_offsets: [0, 4e9] } }, data)),
    /ends at byte 4000000000 of the data section, which holds 16 bytes/,
  );
  assert.throws(() => loadSafetensors(rawFile('dtype.safetensors', { w: { dtype: 'Q4', shape: [4], data_offsets: [0, 16] } }, data)), /unsupported dtype "Q4"/);
  assert.throws(() => loadSafetensors(rawFile('shape.safetensors', { w: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, data)), /bad shape \[-4\]/);
  assert.throws(
    () =>
      loadSafetensors(
        rawFile(
          'overlap.safetensors',
          { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } },
          data,
        ),
      ),
    /overlaps the previous one/,
  );
  assert.throws(() => loadSafetensors(rawFile('gap.safetensors', { a: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, data)), /gap before tensor 'a'/);
  assert.throws(
    () => loadSafetensors(rawFile('trailing.safetensors', { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, data)),
    /data section has 16 bytes but the tensors cover 8/,
  );
  assert.throws(() => loadSafetensors(rawFile('meta.safetensors', { __metadata__: { n: 3 } }, new Uint8Array(0))), /metadata 'n' is not a string/);
  const notJson = file('notjson.safetensors');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(4n);
  writeFileSync(notJson, Buffer.concat([len, Buffer.from('{abc')]));
  assert.throws(() => loadSafetensors(notJson), /the header is not valid JSON/);
  x.dispose();
});

test('writes are atomic: no temporary file is left, a failed write leaves the old file intact', () => {
  const sub = mkdtempSync(path.join(dir, 'atomic-'));
  const p = path.join(sub, 'w.safetensors');
  const a = t.ones([3]);
  saveSafetensors(p, new Map([['a', a]]));
  saveSafetensors(
    p,
    new Map([
      ['a', a],
      ['b', a],
    ]),
  );
  assert.deepEqual(readdirSync(sub), ['w.safetensors']);
  const gone = t.zeros([2]);
  gone.dispose();
  assert.throws(
    () =>
      saveSafetensors(
        p,
        new Map([
          ['a', a],
          ['gone', gone],
        ]),
      ),
    /tensor 'gone' was disposed/,
  );
  assert.throws(() => saveSafetensors(path.join(sub, 'missing-dir', 'x.safetensors'), new Map([['a', a]])), /ENOENT/);
  assert.deepEqual(readdirSync(sub), ['w.safetensors']);
  const { tensors } = loadSafetensors(p);
  assert.deepEqual([...tensors.keys()], ['a', 'b']);
  t.dispose([a, ...tensors.values()]);
});

test('PyTorch reads our files (aliases expanded) and we read files it writes', () => {
  t.manualSeed(2);
  const model = createModel('se_resnet_d_2_full_shared');
  const ours = file('se.safetensors');
  const theirs = file('py.safetensors');
  saveWeights(model, ours);
  const half = t.tensor([0.25, -8, 3], [3], { dtype: 'bfloat16' });
  const py = runPython<{ load: string; sums: Record<string, number>; same: boolean }>(
    `
import ref_models, safetensors_np as st
m = ref_models.build('se_resnet_d_2_full_shared', 10)
sd, meta = st.read_state_dict(inp['ours'])
m.load_state_dict(sd)
same = m.layer2[1].conv1.weight is m.layer2[0].conv2.weight
sums = {k: float(v.double().sum()) for k, v in m.state_dict().items() if k in inp['keys']}
st.write(inp['theirs'], {'w': m.layer3[1].conv2.weight, 'n': m.bn1.num_batches_tracked, 'h': torch.tensor([0.25, -8, 3], dtype=torch.bfloat16),
                         'b': torch.tensor([True, False])}, {'from': 'torch'})
print(json.dumps({'load': 'ok', 'sums': sums, 'same': same}))
`,
    { ours, theirs, keys: ['layer2.1.conv1.weight', 'fc.bias', 'bn1.running_var'] },
  );
  assert.equal(py.load, 'ok');
  assert.equal(py.same, true, 'the reference model still shares its kernel after loading');
  const sd = model.stateDict();
  for (const [k, s] of Object.entries(py.sums)) {
    const mine = sd
      .get(k)!
      .toArray()
      .reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(mine - s) <= 1e-4 * Math.max(1, Math.abs(s)), `${k}: ${mine} vs ${s}`);
  }
  const { tensors, metadata } = loadSafetensors(theirs);
  assert.deepEqual(metadata, { from: 'torch' });
  assert.deepEqual(tensors.get('w')!.toArray(), sd.get('layer3.0.conv2.weight')!.toArray());
  assert.equal(tensors.get('n')!.dtype, 'int64');
  assert.deepEqual(tensors.get('h')!.toArray(), half.toArray());
  assert.deepEqual(tensors.get('b')!.toArray(), [1, 0]);
  t.dispose([half, ...tensors.values()]);
  model.dispose();
});
