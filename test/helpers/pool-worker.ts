// A ConvMixer-64/4 shared training step whose numbers depend on nothing process-wide (its
// parameters come from its own generator, not the global one), and the worker_threads entry that
// runs it: test/cpu-thread-pool.test.ts runs these steps on two JavaScript threads at once, so
// both call kshare's kernels together and one of them finds the pool busy.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as t from '../../src/tensor/index.js';
import { createModel } from '../../src/models/index.js';

/** Output and every parameter's gradient of one training step, as plain arrays. */
export function isolatedStep(): number[][] {
  const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
  try {
    return t.tidy(() => {
      const g = new t.Generator(6);
      for (const p of model.parameters()) p.setData_(t.mul(t.randn(p.shape, { generator: g }), 0.1));
      const x = t.randn([4, 3, 32, 32], { generator: g });
      model.train();
      const y = model.forward(x);
      t.sum(t.mul(y, y)).backward();
      return [y, ...model.parameters().map((p) => p.grad!)].map((v) => Array.from(v.toFloat32Array()));
    });
  } finally {
    model.zeroGrad();
    model.dispose();
  }
}

// In a Worker: `steps` steps at `threads` intra-op threads, then each step's numbers back.
if (!isMainThread && parentPort) {
  const { steps, threads } = workerData as { steps: number; threads: number };
  t.setNumThreads(threads);
  const results: number[][][] = [];
  for (let i = 0; i < steps; i++) results.push(isolatedStep());
  parentPort.postMessage(results);
}
