// kshare's own thread pool for its CPU kernels (native/cpu_thread_pool.cc): the kernels' parallel
// loops run on it (runtimeInfo's job count moves, and it has thread count - 1 workers), with the
// same numbers bit for bit as on libgomp's threads (KSHARE_CPU_POOL=0) at the same thread count,
// through changes of the thread count and back (the 1x1 weight gradient sums one partial a
// thread, so other thread counts may differ in the last bits).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { Worker } from 'node:worker_threads';
import os from 'node:os';
import { importInChild, withEnv, withThreads } from './helpers/env.js';
import { spawnSync } from 'node:child_process';
import { isolatedStep } from './helpers/pool-worker.js';

/** A ConvMixer-64/4 shared training step from a fixed seed: output, every gradient, the buffers. */
function step(): Float32Array[] {
  t.manualSeed(6);
  const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
  try {
    return t.tidy(() => {
      const x = t.randn([4, 3, 32, 32], { generator: new t.Generator(3) });
      model.train();
      const y = model.forward(x);
      t.sum(t.mul(y, y)).backward();
      return [y, ...model.parameters().map((p) => p.grad!), ...model.buffers()].map((v) => v.toFloat32Array());
    });
  } finally {
    model.zeroGrad();
    model.dispose();
  }
}

test('kshare kernels run their parallel loops on its own pool, with the numbers of libgomp', () => {
  const live = t.liveTensors();
  for (const threads of [2, 3, 2]) {
    withThreads(threads, () => {
      const before = t.runtimeInfo().cpuPoolJobs;
      const pooled = step();
      const info = t.runtimeInfo();
      assert.ok(info.cpuPoolJobs > before, `${threads} threads: the step ran kernel loops on the pool`);
      assert.equal(info.cpuPoolWorkers, threads - 1, `${threads} threads: ${threads - 1} workers`);
      const jobs = info.cpuPoolJobs;
      const libgomp = withEnv({ KSHARE_CPU_POOL: '0' }, step);
      assert.equal(t.runtimeInfo().cpuPoolJobs, jobs, 'KSHARE_CPU_POOL=0: the pool is not used');
      assert.deepEqual(pooled, libgomp, `${threads} threads: the pool and libgomp's threads give the same numbers`);
    });
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('one thread runs the kernels on the calling thread, without the pool', () => {
  withThreads(1, () => {
    const before = t.runtimeInfo().cpuPoolJobs;
    step();
    assert.equal(t.runtimeInfo().cpuPoolJobs, before);
  });
});

test('an error raised inside a parallel loop reaches JavaScript, leaks nothing, and leaves the pool usable', () => {
  const live = t.liveTensors();
  const expected = withThreads(2, step);
  // 1 thread: the loop on the calling thread; 2: on the pool (its last chunk on a worker); 2 with
  // KSHARE_CPU_POOL=0: on libgomp's threads inside at::parallel_for.
  for (const [threads, pool] of [
    [1, undefined],
    [2, undefined],
    [2, '0'],
  ] as const) {
    withThreads(threads, () =>
      withEnv({ KSHARE_CPU_POOL: pool }, () => {
        const what = `${threads} thread(s)${pool ? ', KSHARE_CPU_POOL=0' : ''}`;
        assert.throws(() => withEnv({ KSHARE_NATIVE_FAIL_JOBS: '1' }, step), /a parallel loop failed on purpose/, what);
        assert.equal(t.liveTensors(), live, `${what}: no tensor leaked by the failed step`);
      }),
    );
  }
  // The pool still runs jobs, with the same numbers.
  const before = t.runtimeInfo().cpuPoolJobs;
  assert.deepEqual(withThreads(2, step), expected, 'after the failures: the same numbers at 2 threads');
  assert.ok(t.runtimeInfo().cpuPoolJobs > before, 'after the failures: the pool runs jobs');
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('two JavaScript threads running kernels at once: the one that finds the pool busy runs on libgomp, with the same numbers', async () => {
  const live = t.liveTensors();
  const expected = withThreads(2, isolatedStep);
  const fallbacks = t.runtimeInfo().cpuPoolFallbacks;
  const worker = new Worker(new URL('./helpers/pool-worker.js', import.meta.url), { workerData: { steps: 12, threads: 2 } });
  let done = false;
  const fromWorker = new Promise<number[][][]>((resolve, reject) => {
    worker.once('message', (m: number[][][]) => {
      done = true;
      resolve(m);
    });
    worker.once('error', reject);
  });
  let mainSteps = 0;
  const threadsBefore = t.runtimeInfo().numThreads;
  t.setNumThreads(2);
  try {
    while (!done) {
      assert.deepEqual(isolatedStep(), expected, `main thread, step ${mainSteps}: the numbers of a step run alone`);
      mainSteps++;
      await new Promise((r) => setImmediate(r)); // lets the worker's message in
    }
  } finally {
    t.setNumThreads(threadsBefore);
  }
  const results = await fromWorker;
  await worker.terminate();
  assert.equal(results.length, 12);
  results.forEach((r, i) => assert.deepEqual(r, expected, `worker, step ${i}: the numbers of a step run alone`));
  assert.ok(mainSteps > 0, 'the main thread ran steps while the worker did');
  assert.ok(t.runtimeInfo().cpuPoolFallbacks > fallbacks, 'some kernel loops found the pool busy and ran on libgomp');
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test("the pool's workers spin KSHARE_CPU_SPIN_US microseconds for the next call before they sleep, with the same numbers; a bad value fails at import", () => {
  const live = t.liveTensors();
  withThreads(2, () => {
    assert.equal(t.runtimeInfo().cpuPoolSpinUs, 50, 'unset: 50 us');
    const expected = step();
    /** A step's pool calls and the ones among them that had to wake a sleeping worker. */
    const stepWith = (spin: string) =>
      withEnv({ KSHARE_CPU_SPIN_US: spin }, () => {
        assert.equal(t.runtimeInfo().cpuPoolSpinUs, Number(spin), `KSHARE_CPU_SPIN_US=${spin} is read at the call`);
        step(); // the first call after the change still found the workers as the old limit left them
        const before = t.runtimeInfo();
        assert.deepEqual(step(), expected, `KSHARE_CPU_SPIN_US=${spin}: the same numbers`);
        const after = t.runtimeInfo();
        return { jobs: after.cpuPoolJobs - before.cpuPoolJobs, wakes: after.cpuPoolWakes - before.cpuPoolWakes };
      });
    const never = stepWith('0');
    assert.ok(never.jobs > 10 && never.wakes >= never.jobs / 2, `no spin: most calls wake the worker (${never.wakes} of ${never.jobs})`);
    const long = stepWith('1000000');
    assert.ok(long.jobs > 10, `${long.jobs} calls`);
    assert.equal(long.wakes, 0, `a 1 s spin: no call of a step finds the worker asleep (${long.wakes} of ${long.jobs} did)`);
  });
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
  const bad = importInChild({ KSHARE_CPU_SPIN_US: '1.5' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /KSHARE_CPU_SPIN_US must be a whole number of microseconds .* got '1\.5'/);
});

// A scheduler that stacks the pool's worker on the calling thread's CPU (seen here after the
// process blocked for a while: the two then take turns on one core) is simulated with taskset:
// both threads pinned to CPU 0 (the worker first, so it was created with every CPU allowed). The
// pool moves the worker to the CPUs the caller is not on, once, and leaves the caller's CPUs alone.
test(
  "a worker found on the caller's CPU is moved to the other CPUs, unless KSHARE_CPU_SPREAD=0",
  { skip: os.availableParallelism() < 2 || spawnSync('taskset', ['-V']).status !== 0 ? 'needs 2 CPUs and taskset' : false },
  () => {
    const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { spawnSync } from 'node:child_process';
    t.setNumThreads(2);
    const x = t.randn([8, 64, 16, 16]), w = t.randn([64, 1, 5, 5]), b = t.randn([64]);
    const call = () => t.noGrad(() => t.tidy(() => void t.conv2d(x, w, b, { padding: 2, groups: 64 })));
    call();
    const tids = readdirSync('/proc/self/task').filter((id) => readFileSync('/proc/self/task/' + id + '/comm', 'utf8').trim() === 'kshare-pool');
    if (tids.length !== 1) throw new Error('pool workers: ' + tids.length);
    const allowed = (id) => readFileSync('/proc/self/task/' + id + '/status', 'utf8').match(/^Cpus_allowed_list:\\s*(.*)$/m)[1];
    // What the pool spreads a worker over: the CPUs the calling thread had when the pool started
    // (the worker's own list may already be narrower: the first call can have spread it).
    const before = allowed(String(process.pid));
    for (const id of [tids[0], String(process.pid)]) if (spawnSync('taskset', ['-p', '-c', '0', id]).status !== 0) throw new Error('taskset failed');
    const spreads = t.runtimeInfo().cpuPoolSpreads;
    for (let i = 0; i < 20; i++) call();
    console.log(JSON.stringify({ before, worker: allowed(tids[0]), caller: allowed(process.pid), spreads: t.runtimeInfo().cpuPoolSpreads - spreads }));`;
    const run = (env: Record<string, string>) => {
      const r = importInChild(env, script);
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as { before: string; worker: string; caller: string; spreads: number };
    };
    const spread = run({});
    assert.equal(spread.caller, '0', "the caller's affinity is left as taskset set it");
    assert.equal(spread.spreads, 1, `moved once (${spread.spreads})`);
    const cpus = (list: string) =>
      list.split(',').flatMap((r) => {
        const [a, z = a] = r.split('-').map(Number);
        return Array.from({ length: z! - a! + 1 }, (_, i) => a! + i);
      });
    assert.deepEqual(
      cpus(spread.worker),
      cpus(spread.before).filter((c) => c !== 0),
      `the worker may run anywhere but CPU 0 (${spread.worker}; the process was allowed ${spread.before})`,
    );
    const left = run({ KSHARE_CPU_SPREAD: '0' });
    assert.deepEqual({ worker: left.worker, spreads: left.spreads }, { worker: '0', spreads: 0 }, 'KSHARE_CPU_SPREAD=0: the worker stays where it was put');
  },
);
