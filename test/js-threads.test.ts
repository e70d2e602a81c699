// Two JavaScript environments in one process (the main thread and a worker_threads Worker, each
// importing kshare) share the addon: its operator table is the process's (a Worker resolving
// operators while the main thread calls them once crashed the process, an unlocked vector growing
// under a reader), and each environment's libtorch warnings go to its own handler (a Worker's
// import used to replace the main thread's, whose next warning then crashed it: SIGSEGV).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as t from '../src/tensor/index.js';
import { native } from '../src/tensor/native.js';
import { KERNELS } from '../src/tensor/kernels.js';
import { raiseResizeWarning, type WorkerReport } from './helpers/js-threads-worker.js';

test('a Worker resolves operators while the main thread calls them: one id per operator for the process, right numbers, and each thread keeps its own warnings', async () => {
  const live = t.liveTensors();
  assert.equal(t.collectWarnings(raiseResizeWarning).warnings.length, 1, 'main thread, before the Worker');
  const known = Object.values(KERNELS).filter((spec) => {
    const [op, overload = ''] = spec.split('.');
    try {
      native.opId(op!, overload);
      return true;
    } catch {
      return false;
    }
  }).length;
  const countBefore = native.opCount();
  const rounds = 300;
  const worker = new Worker(new URL('./helpers/js-threads-worker.js', import.meta.url), { workerData: { rounds } });
  let report: WorkerReport | undefined;
  const replied = new Promise<void>((resolve, reject) => {
    worker.once('message', (m: WorkerReport) => {
      report = m;
      resolve();
    });
    worker.once('error', reject);
  });
  const x = t.arange(0, 64, 1, { dtype: 'float32' });
  const expected = Array.from({ length: 64 }, (_, i) => i * i + 1);
  let calls = 0;
  try {
    while (!report) {
      for (let i = 0; i < 50; i++) {
        const got = t.tidy(() => Array.from(t.add(t.mul(x, x), 1).toFloat32Array()));
        assert.deepEqual(got, expected, `main thread, call ${calls}`);
        calls++;
      }
      await new Promise((r) => setImmediate(r));
    }
    await replied;
  } finally {
    x.dispose();
  }
  assert.ok(calls > 0, 'the main thread called operators while the Worker resolved them');
  const r = report!;
  assert.deepEqual(r.changedIds, [], 'an operator resolved again keeps its id');
  assert.equal(Object.keys(r.ids).length, known, 'the Worker resolved what the main thread can');
  for (const [spec, id] of Object.entries(r.ids)) {
    const [op, overload = ''] = spec.split('.');
    assert.equal(native.opId(op!, overload), id, `${spec}: the same id on both threads`);
  }
  assert.ok(
    native.opCount() <= countBefore + known,
    `${rounds} rounds of resolving ${known} operators add at most ${known} entries (${countBefore} before, ${native.opCount()} after)`,
  );
  assert.equal(r.warnings, 1, "the Worker's warning reached the Worker's handler");
  assert.equal(t.collectWarnings(raiseResizeWarning).warnings.length, 1, "main thread, the Worker alive: the main thread's handler");
  await worker.terminate();
  assert.equal(t.collectWarnings(raiseResizeWarning).warnings.length, 1, 'main thread, after the Worker ended');
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});
