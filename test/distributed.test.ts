// Data-parallel training over c10d (Gloo on loopback, 2 processes, 1 thread each): collectives,
// DDP gradient averaging (equal to one process with the global batch), and faults that end the
// job in bounded time with the failed rank named.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runRanks, lastJson, skipWithoutGloo } from './helpers/ranks.js';
import { distributedEnv } from '../src/distributed/index.js';

const noGloo = skipWithoutGloo();

const worker = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'dist-worker.js');

test('collectives: all-reduce sum and avg, broadcast from rank 1, barrier', { skip: noGloo }, async () => {
  const rs = await runRanks(worker, ['collectives'], 2);
  for (const r of rs) {
    const o = lastJson<{ sum: number[]; avg: number[]; bcast: number[]; collectives: number }>(r);
    assert.deepEqual(o.sum, [3, 30]);
    assert.deepEqual(o.avg, [1.5]);
    assert.deepEqual(o.bcast, [42, 1]);
    assert.equal(o.collectives, 4);
  }
});

const maxDiff = (a: number[], b: number[]) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test("DDP: ranks start from rank 0's weights, stay identical, and 2 x batch 4 equals one process with batch 8", { skip: noGloo }, async () => {
  // Small buckets: three of them, each launched from a backward hook (overlap), in the same order on both ranks.
  const [[single], rs] = await Promise.all([
    runRanks(worker, ['single', '4'], 0),
    runRanks(worker, ['ddp', '4'], 2, { env: { KSHARE_TEST_BUCKET_MB: '0.001' } }),
  ]);
  const ref = lastJson<{ weights: number[] }>(single!).weights;
  const [a, b] = rs.map((r) => lastJson<{ weights: number[]; bytesPerStep: number; buckets: number; launchedEarly: number }>(r));
  assert.equal(maxDiff(a!.weights, b!.weights), 0, 'ranks hold identical weights');
  const d = maxDiff(a!.weights, ref);
  assert.ok(d < 1e-5, `DDP weights match the single-process run: max difference ${d}`);
  // 3 convolutions (one kernel shared by two: counted once) + linear: all distinct trainable scalars, float32.
  assert.equal(a!.bytesPerStep, 4 * (3 * 6 * 9 + 6 + (6 * 6 * 9 + 6) + (6 * 4 + 4)));
  assert.equal(a!.buckets, 3);
  assert.equal(a!.launchedEarly, 4 * 3, 'every bucket was launched while backward was running');
});

test('a rank that dies or hangs fails the others within the timeout, naming it', { skip: noGloo }, async () => {
  const runs = await Promise.all(['die', 'hang'].map((s) => runRanks(worker, [s], 2, { env: { KSHARE_TEST_TIMEOUT_MS: '3000' }, killAfterMs: 30_000 })));
  for (const [i, scenario] of ['die', 'hang'].entries()) {
    const rs = runs[i]!;
    const o = lastJson<{ error: string | null; seconds: number }>(rs[0]!);
    assert.ok(o.error, `${scenario}: rank 0 got an error`);
    assert.match(o.error!, /rank 0\/2/);
    assert.match(o.error!, scenario === 'die' ? /rank 1 stopped responding/ : /rank 1 is alive but has not reached collective #2/);
    assert.ok(o.seconds < 8, `${scenario}: bounded time (${o.seconds} s)`);
  }
});

test('DDP refuses ranks whose options differ instead of crashing in Gloo', { skip: noGloo }, async () => {
  const rs = await runRanks(worker, ['ddp', '4'], 2, { perRankEnv: (r) => ({ KSHARE_TEST_BUCKET_MB: r ? '0.001' : '25' }) });
  assert.match(rs[1]!.stderr, /rank 1 differs from rank 0 in its bucket size/);
  assert.equal(rs[1]!.code, 1);
  assert.match(rs[0]!.stderr, /rank 1 stopped responding/);
});

test('standard environment variables: validated with the variable named', () => {
  assert.equal(distributedEnv({}), null);
  assert.deepEqual(distributedEnv({ WORLD_SIZE: '4', RANK: '2', MASTER_ADDR: 'node0', MASTER_PORT: '29500' }), {
    host: 'node0',
    port: 29500,
    worldSize: 4,
    rank: 2,
    localRank: 2,
    ifname: undefined,
  });
  assert.throws(() => distributedEnv({ WORLD_SIZE: '2', RANK: '2', MASTER_ADDR: 'a', MASTER_PORT: '1' }), /RANK=2 must be an integer in \[0, 1\]/);
  assert.throws(() => distributedEnv({ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '1' }), /MASTER_ADDR is not set/);
  assert.throws(() => distributedEnv({ WORLD_SIZE: '2', RANK: '0', MASTER_ADDR: 'a' }), /MASTER_PORT is not set/);
});
