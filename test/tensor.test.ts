// Tensors themselves: dtypes, creation, seeded randomness, host data in and out, conversions
// and memory formats, and the OpenMP wait default the library sets. Expected values are computed
// by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const approx = (a: number[], b: number[], tol = 1e-6) => assert.ok(a.length === b.length && a.every((v, i) => Math.abs(v - b[i]!) <= tol), `[${a}] != [${b}]`);

test('every dtype round-trips through host memory with the right typed array', () => {
  t.tidy(() => {
    const f32 = t.tensor(new Float32Array([1.5, -2, 3.25]));
    assert.equal(f32.dtype, 'float32');
    assert.ok(f32.dataSync() instanceof Float32Array);
    assert.deepEqual(Array.from(f32.dataSync() as Float32Array), [1.5, -2, 3.25]);

    const i64 = t.tensor(BigInt64Array.from([1n, -(2n ** 40n), 7n]));
    assert.equal(i64.dtype, 'int64');
    assert.deepEqual(Array.from(i64.dataSync() as BigInt64Array), [1n, -(2n ** 40n), 7n]);
    assert.deepEqual(i64.toArray(), [1, -(2 ** 40), 7]);

    const u8 = t.tensor(new Uint8Array([0, 128, 255]));
    assert.equal(u8.dtype, 'uint8');
    assert.deepEqual(u8.toArray(), [0, 128, 255]);

    const b = t.tensor([1, 0, 1], [3], { dtype: 'bool' });
    assert.equal(b.dtype, 'bool');
    assert.deepEqual(b.toArray(), [1, 0, 1]);

    // float16: 1 = 0x3C00, -2 = 0xC000, 0.5 = 0x3800 (raw bits), and exact values back
    const h = t.tensor([1, -2, 0.5], [3], { dtype: 'float16' });
    assert.equal(h.dtype, 'float16');
    assert.deepEqual(Array.from(h.dataSync() as Uint16Array), [0x3c00, 0xc000, 0x3800]);
    assert.deepEqual(h.toArray(), [1, -2, 0.5]);

    // bfloat16: the top 16 bits of float32; 1 = 0x3F80, -2 = 0xC000, 0.5 = 0x3F00
    const bf = t.tensor([1, -2, 0.5], [3], { dtype: 'bfloat16' });
    assert.equal(bf.dtype, 'bfloat16');
    assert.deepEqual(Array.from(bf.dataSync() as Uint16Array), [0x3f80, 0xc000, 0x3f00]);
    assert.deepEqual(bf.toArray(), [1, -2, 0.5]);

    const f64 = t.tensor([0.1], [1], { dtype: 'float64' });
    assert.equal((f64.dataSync() as Float64Array)[0], 0.1);
  });
});

test('creation: zeros, ones, full, arange, scalar, like-constructors', () => {
  t.tidy(() => {
    const z = t.zeros([2, 3]);
    assert.deepEqual(z.shape, [2, 3]);
    assert.equal(z.dtype, 'float32');
    assert.equal(z.device, 'cpu');
    assert.deepEqual(z.toArray(), [0, 0, 0, 0, 0, 0]);
    assert.deepEqual(t.ones([2], { dtype: 'int64' }).toArray(), [1, 1]);
    assert.equal(t.ones([2], { dtype: 'int64' }).dtype, 'int64');
    assert.deepEqual(t.full([2, 2], 2.5).toArray(), [2.5, 2.5, 2.5, 2.5]);
    assert.deepEqual(t.full([3], 7, { dtype: 'uint8' }).toArray(), [7, 7, 7]);
    const a = t.arange(5);
    assert.equal(a.dtype, 'int64');
    assert.deepEqual(a.toArray(), [0, 1, 2, 3, 4]);
    assert.deepEqual(t.arange(2, 11, 3).toArray(), [2, 5, 8]);
    const af = t.arange(0, 1, 0.25);
    assert.equal(af.dtype, 'float32');
    assert.deepEqual(af.toArray(), [0, 0.25, 0.5, 0.75]);
    assert.deepEqual(t.arange(3, 0, -1).toArray(), [3, 2, 1]);
    const s = t.scalar(4);
    assert.deepEqual(s.shape, []);
    assert.equal(s.item(), 4);
    const like = t.fullLike(t.zeros([2], { dtype: 'int64' }), 9);
    assert.equal(like.dtype, 'int64');
    assert.deepEqual(like.toArray(), [9, 9]);
    assert.deepEqual(t.onesLike(z).shape, [2, 3]);
    assert.deepEqual(t.zerosLike(t.ones([4])).toArray(), [0, 0, 0, 0]);
    assert.deepEqual(t.zeros([0, 3]).shape, [0, 3]);
  });
});

test('random values are reproducible with a seeded Generator and with manualSeed', () => {
  t.tidy(() => {
    const draw = (seed: number) => {
      const g = new t.Generator(seed);
      return [
        t.randn([50], { generator: g }).toArray(),
        t.rand([50], { generator: g }).toArray(),
        t.randint(3, 9, [50], { generator: g }).toArray(),
        t.randperm(10, { generator: g }).toArray(),
      ];
    };
    const a = draw(123),
      b = draw(123),
      c = draw(124);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a[0], c[0]);
    const [, u, ri, perm] = a;
    assert.ok(u!.every((v) => v >= 0 && v < 1));
    assert.ok(ri!.every((v) => Number.isInteger(v) && v >= 3 && v < 9));
    assert.ok(new Set(ri).size > 3, 'randint should produce several values');
    assert.deepEqual(
      [...perm!].sort((x, y) => x - y),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    );

    // generator state can be saved and restored
    const g = new t.Generator(1);
    const st = g.getState();
    const first = t.randn([5], { generator: g }).toArray();
    g.setState(st);
    assert.deepEqual(t.randn([5], { generator: g }).toArray(), first);

    // a generator is independent of the global stream
    t.manualSeed(7);
    const x1 = t.randn([20]).toArray();
    t.manualSeed(7);
    t.randn([3], { generator: new t.Generator(99) });
    const x2 = t.randn([20]).toArray();
    assert.deepEqual(x1, x2);
    t.manualSeed(8);
    assert.notDeepEqual(t.randn([20]).toArray(), x1);

    // global RNG state snapshot / restore
    const rs = t.getRngState();
    const r1 = t.rand([4]).toArray();
    t.setRngState(rs);
    assert.deepEqual(t.rand([4]).toArray(), r1);

    // in-place initialisers use the generator too
    const w1 = t.normal_(t.zeros([8]), 0, 1, new t.Generator(3)).toArray();
    const w2 = t.normal_(t.zeros([8]), 0, 1, new t.Generator(3)).toArray();
    assert.deepEqual(w1, w2);
    const uu = t.uniform_(t.zeros([1000]), -2, -1, new t.Generator(3)).toArray();
    assert.ok(uu.every((v) => v >= -2 && v <= -1));
  });
});

test('random distributions have the right moments', () => {
  t.tidy(() => {
    const g = new t.Generator(2024);
    const n = t.randn([20000], { generator: g });
    assert.ok(Math.abs(t.mean(n).item()) < 0.03);
    assert.ok(Math.abs(t.variance(n, 0).item() - 1) < 0.04);
    const u = t.rand([20000], { generator: g });
    assert.ok(Math.abs(t.mean(u).item() - 0.5) < 0.01);
  });
});

test('tensors from typed arrays and Node Buffers (including pooled Buffers with an offset)', () => {
  t.tidy(() => {
    const f = new Float32Array([1, 2, 3, 4, 5, 6]);
    const x = t.tensor(f, [2, 3]);
    assert.deepEqual(x.shape, [2, 3]);
    f[0] = 100; // the tensor owns a copy
    assert.deepEqual(x.toArray(), [1, 2, 3, 4, 5, 6]);
    // a view into the middle of a larger buffer
    const big = new Float32Array([9, 9, 1, 2, 9]);
    assert.deepEqual(t.tensor(big.subarray(2, 4)).toArray(), [1, 2]);

    const buf = Buffer.from([10, 20, 30, 40]);
    const u = t.tensor(buf, [2, 2]);
    assert.equal(u.dtype, 'uint8');
    assert.deepEqual(u.toArray(), [10, 20, 30, 40]);
    // Buffer.alloc small sizes come from a shared pool, so byteOffset is usually non-zero
    const pooled = Buffer.allocUnsafe(8);
    pooled.writeFloatLE(1.25, 0);
    pooled.writeFloatLE(-3.5, 4);
    const fp = t.tensor(pooled, [2], { dtype: 'float32' });
    assert.deepEqual(fp.toArray(), [1.25, -3.5]);
    // image bytes N×C×H×W as uint8, then to float in [0, 1]
    const img = t
      .tensor(new Uint8Array([0, 51, 102, 255]), [1, 1, 2, 2])
      .to('float32')
      .div(255);
    approx(img.toArray(), [0, 0.2, 0.4, 1]);
    assert.deepEqual(t.tensor([3, 4], [2], { dtype: 'int64' }).toArray(), [3, 4]);
    assert.throws(() => t.tensor(new Float32Array(5), [2, 3]), /tensor: shape \[2,3\] needs 6 elements/);
  });
});

test('to() converts across dtypes with the usual rounding and truncation', () => {
  t.tidy(() => {
    const x = t.tensor([1 / 3, 2.7, -2.7, 0], [4]);
    // float16 keeps 11 significant bits: 1/3 -> 0.333251953125; bfloat16 8 bits: 0.333984375
    assert.equal(x.to('float16').toArray()[0], 0.333251953125);
    assert.equal(x.to('bfloat16').toArray()[0], 0.333984375);
    const i = x.to('int64');
    assert.equal(i.dtype, 'int64');
    assert.deepEqual(i.toArray(), [0, 2, -2, 0]);
    assert.deepEqual(x.to('bool').toArray(), [1, 1, 1, 0]);
    assert.deepEqual(t.tensor([1, 0], [2], { dtype: 'bool' }).to('float32').toArray(), [1, 0]);
    assert.deepEqual(
      t
        .tensor(new Uint8Array([200, 7]))
        .to('float16')
        .toArray(),
      [200, 7],
    );
    assert.deepEqual(t.tensor([65504, 70000], [2]).to('float16').toArray(), [65504, Infinity]);
    assert.deepEqual(t.tensor([3.9], [1]).to({ dtype: 'uint8' }).toArray(), [3]);
    // a no-op conversion returns the same tensor; copy: true forces a new one
    assert.ok(x.to('float32').isSameTensor(x));
    assert.ok(!x.to({ dtype: 'float32', copy: true }).isSameTensor(x));
    assert.ok(x.to('cpu').isSameTensor(x));
  });
});

test('channels-last memory format: layout changes, values and conv results do not', () => {
  t.tidy(() => {
    const g = new t.Generator(4);
    const x = t.randn([2, 3, 4, 5], { generator: g });
    assert.equal(t.isContiguous(x), true);
    assert.equal(t.isContiguous(x, 'channels_last'), false);
    const cl = x.contiguous('channels_last');
    assert.equal(t.isContiguous(cl, 'channels_last'), true);
    assert.equal(t.isContiguous(cl), false);
    assert.deepEqual(cl.shape, [2, 3, 4, 5]);
    assert.deepEqual(Array.from(cl.toFloat32Array()), Array.from(x.toFloat32Array())); // read back in logical order
    const viaTo = x.to({ memoryFormat: 'channels_last' });
    assert.equal(t.isContiguous(viaTo, 'channels_last'), true);
    const back = cl.contiguous();
    assert.equal(t.isContiguous(back), true);
    const w = t.randn([6, 3, 3, 3], { generator: g });
    const y1 = t.conv2d(x, w, null, { padding: 1 });
    const y2 = t.conv2d(cl, w.contiguous('channels_last'), null, { padding: 1 });
    const a = y1.toFloat32Array(),
      b = y2.toFloat32Array();
    assert.ok(a.every((v, i) => Math.abs(v - b[i]!) < 1e-4));
  });
});

test('tensor metadata, clone, copy_, fill_, zero_ and dispose', () => {
  const x = t.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  assert.equal(x.rank, 2);
  assert.equal(x.size, 6);
  assert.equal(x.dim(-1), 3);
  assert.throws(() => x.dim(2), RangeError);
  assert.equal(x.toString(), 'Tensor(shape=[2,3], dtype=float32, device=cpu)');
  const c = x.clone();
  assert.ok(!c.isSameTensor(x));
  t.fill_(c, 7);
  assert.deepEqual(x.toArray(), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(c.toArray(), [7, 7, 7, 7, 7, 7]);
  t.copy_(
    c,
    t.tidy(() => t.tensor([1, 2, 3], [3])),
  );
  assert.deepEqual(c.toArray(), [1, 2, 3, 1, 2, 3]);
  t.zero_(c);
  assert.deepEqual(c.toArray(), [0, 0, 0, 0, 0, 0]);
  assert.throws(() => x.item(), /item: tensor has 6 elements/);
  x.dispose();
  x.dispose(); // twice is harmless
  assert.equal(x.isDisposed, true);
  assert.throws(() => x.shape, /disposed/);
  c.dispose();
});

test('cpuView is a zero-copy view that outlives the tensor handle', () => {
  const x = t.zeros([2, 3]);
  const v = x.cpuView() as Float32Array;
  v[4] = 7.5; // writes reach the tensor
  assert.deepEqual(Array.from(x.dataSync() as Float32Array), [0, 0, 0, 0, 7.5, 0]);
  const before = t.liveTensors();
  x.dispose();
  assert.equal(t.liveTensors(), before - 1);
  assert.equal(v[4], 7.5); // the view keeps the memory alive after dispose
  const nc = t.tidy(() => t.transpose(t.zeros([2, 3]), 0, 1));
  assert.throws(() => nc.cpuView(), /contiguous CPU tensor/);
  nc.dispose();
});

test("OpenMP wait setting: kshare's short spin unless the user chose OMP_WAIT_POLICY or GOMP_SPINCOUNT", () => {
  // libgomp reads these when it loads, so each case is a fresh process importing the library.
  const index = fileURLToPath(new URL('../src/tensor/index.js', import.meta.url));
  const script = `await import(${JSON.stringify(index)}); console.log(JSON.stringify([process.env.OMP_WAIT_POLICY ?? null, process.env.GOMP_SPINCOUNT ?? null]));`;
  const run = (env: Record<string, string>) => {
    const clean = { ...process.env };
    delete clean.OMP_WAIT_POLICY;
    delete clean.GOMP_SPINCOUNT;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...clean, ...env }, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as [string | null, string | null];
  };
  assert.deepEqual(run({}), [null, '1000']);
  assert.deepEqual(run({ OMP_WAIT_POLICY: 'PASSIVE' }), ['PASSIVE', null]);
  assert.deepEqual(run({ GOMP_SPINCOUNT: '50' }), [null, '50']);
});
