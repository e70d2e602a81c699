// One rank of a multi-process test (spawned by test/distributed.test.ts with the standard
// MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK variables). Prints one JSON line with its results.
import * as t from '../../src/tensor/index.js';
import { Conv2d, Linear, ReLU, Sequential, SharedKernel, AdaptiveAvgPool2d, Flatten, type Module } from '../../src/nn/index.js';
import { SGD } from '../../src/train/optim/index.js';
import { ProcessGroup, DataParallel, distributedEnv, distinctTrainable } from '../../src/distributed/index.js';

t.setNumThreads(1);
const scenario = process.argv[2];
const arg = process.argv[3];

/** Conv, a kernel shared by two convolutions, linear head; no BatchNorm. */
export function sharedNet(): Module {
  const c2 = new Conv2d(6, 6, 3, { padding: 1 });
  const k = new SharedKernel(c2.getParameter('weight')!, c2.getParameter('bias'), c2, 'c2');
  return new Sequential(
    new Conv2d(3, 6, 3, { padding: 1 }),
    new ReLU(),
    c2,
    new ReLU(),
    new Conv2d(6, 6, 3, { padding: 1, kernel: k }),
    new ReLU(),
    new AdaptiveAvgPool2d(1),
    new Flatten(),
    new Linear(6, 4),
  );
}

/** Fixed data: 2B images of 8x8 and labels (every rank builds the same). */
function data(n: number): { x: t.Tensor; y: t.Tensor } {
  const g = new t.Generator(123);
  return { x: t.keep(t.randn([n, 3, 8, 8], { generator: g })), y: t.keep(t.randint(0, 4, [n], { generator: g })) };
}

function flatWeights(m: Module): number[] {
  return t.tidy(() => t.cat(distinctTrainable(m).map((p) => p.reshape([-1]))).toArray());
}

/** Steps of SGD on the full batch (world 1) or this rank's half of it. */
function trainSteps(model: Module, dp: DataParallel | null, rank: number, world: number, steps: number, batch: number): number {
  let early = 0;
  const opt = new SGD(distinctTrainable(model), { lr: 0.1, momentum: 0.9 });
  const { x, y } = data(batch * world);
  for (let s = 0; s < steps; s++) {
    t.tidy(() => {
      const xs = t.slice(x, 0, rank * batch, (rank + 1) * batch);
      const ys = t.slice(y, 0, rank * batch, (rank + 1) * batch);
      dp?.beforeForward();
      const loss = t.crossEntropy(model.forward(xs), ys);
      if (dp) early += dp.backward(loss).launchedEarly;
      else loss.backward();
      opt.step();
      opt.zeroGrad();
    });
  }
  opt.dispose();
  return early;
}

async function main(): Promise<void> {
  const env = distributedEnv();
  if (scenario === 'single') {
    // Reference: one process, batch 2B.
    t.manualSeed(7);
    const m = sharedNet();
    trainSteps(m, null, 0, 1, 4, Number(arg) * 2);
    console.log(JSON.stringify({ weights: flatWeights(m) }));
    return;
  }
  if (!env) throw new Error('dist-worker: WORLD_SIZE not set');
  const timeoutMs = Number(process.env.KSHARE_TEST_TIMEOUT_MS ?? 20000);
  const g = await ProcessGroup.init({ host: env.host, port: env.port, rank: env.rank, worldSize: env.worldSize, timeoutMs, heartbeatMs: 200 });
  const out: Record<string, unknown> = { rank: env.rank };
  if (scenario === 'collectives') {
    const a = t.tensor([env.rank + 1, 10 * (env.rank + 1)]);
    g.allReduce(a, 'sum').wait();
    const b = t.tensor([env.rank + 1]);
    g.allReduce(b, 'avg').wait();
    const c = t.tensor([env.rank === 1 ? 42 : 0, env.rank]);
    await g.broadcast(c, 1).waitAsync();
    g.barrier().wait();
    out.sum = a.toArray();
    out.avg = b.toArray();
    out.bcast = c.toArray();
    out.collectives = g.collectives;
  } else if (scenario === 'ddp') {
    // Different seeds per rank: the broadcast from rank 0 must make the weights equal.
    t.manualSeed(env.rank === 0 ? 7 : 99);
    const m = sharedNet();
    const dp = new DataParallel(g, m, { bucketCapMB: Number(process.env.KSHARE_TEST_BUCKET_MB ?? 25) });
    out.bytesPerStep = dp.bytesPerStep;
    out.buckets = dp.bucketBytes.length;
    out.launchedEarly = trainSteps(m, dp, env.rank, env.worldSize, 4, Number(arg));
    out.weights = flatWeights(m);
    dp.dispose();
  } else if (scenario === 'hang' || scenario === 'die') {
    // Rank 1 stops taking part after one collective; rank 0 must fail in bounded time naming rank 1.
    const x = t.tensor([1]);
    g.allReduce(x).wait();
    if (env.rank === 1) {
      if (scenario === 'die') process.exit(3);
      const until = Date.now() + 5_000; // longer than rank 0 needs to give up and diagnose
      while (Date.now() < until) {
        /* stuck in compute: heartbeats continue from their thread */
      }
    }
    const start = Date.now();
    try {
      g.allReduce(x).wait();
      out.error = null;
    } catch (e) {
      out.error = (e as Error).message;
    }
    out.seconds = (Date.now() - start) / 1000;
    console.log(JSON.stringify(out));
    process.exit(0);
  }
  g.destroy();
  console.log(JSON.stringify(out));
}

// `node --test dist/test/` also runs this file, without a scenario: nothing to do then.
if (scenario)
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
