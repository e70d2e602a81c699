// The data-parallel side of `kshare train`: the launcher (--nproc) and one worker of a job.
import { randomInt } from 'node:crypto';
import path from 'node:path';
import { train, type TrainOptions, type TrainSummary } from '../train/trainer.js';
import { ProcessGroup } from './process-group.js';
import { distributedEnv, type DistributedEnv } from './env.js';
import { launchLocal, withoutOption, exitWithLauncher } from './launch.js';
import { DataParallelTraining, checkResumeWorldSize, writeRunInfo, agreeOnNumber } from './trainer-hooks.js';

/** `kshare train --nproc N ...`: runs the same command in N workers; resolves with the exit code. */
export async function launchFromCli(nproc: number): Promise<number> {
  if (distributedEnv())
    throw new Error(`--nproc starts its own job, but WORLD_SIZE=${process.env.WORLD_SIZE} says this process is already a member of one: use one or the other`);
  return launchLocal({ nproc, script: process.argv[1]!, args: withoutOption(process.argv.slice(2), '--nproc') });
}

export interface WorkerOptions {
  timeoutSeconds: number;
  bucketCapMB: number;
}

/** One rank of a data-parallel run; rank 0 logs and writes the run folder. Resolves with the summary (rank 0) or null. */
export async function runDistributedWorker(env: DistributedEnv, o: TrainOptions, w: WorkerOptions): Promise<TrainSummary | null> {
  exitWithLauncher();
  const rank0 = env.rank === 0;
  const log = rank0 ? (o.log ?? ((l: string) => console.log(l))) : () => {};
  const cuda = (o.device ?? 'cpu').startsWith('cuda');
  const device = cuda ? `cuda:${env.localRank}` : (o.device ?? 'cpu');
  const group = await ProcessGroup.init({
    host: env.host,
    port: env.port,
    rank: env.rank,
    worldSize: env.worldSize,
    timeoutMs: Math.round(w.timeoutSeconds * 1000),
    ifname: env.ifname,
    nccl: cuda,
  });
  const ddp = new DataParallelTraining(group, o.recipe.batchSize, { bucketCapMB: w.bucketCapMB });
  // Ctrl-C: every rank stops after the same step (agreed through the group), rank 0 checkpoints.
  let interrupts = 0;
  const onInt = () => {
    if (++interrupts > 1) {
      process.stderr.write(`kshare: rank ${env.rank}: second Ctrl-C: quitting without waiting for the checkpoint\n`);
      process.exit(130);
    }
    log('\nCtrl-C: every rank finishes this step, then rank 0 writes a checkpoint (Ctrl-C again to quit at once)');
    ddp.requestStop();
  };
  process.on('SIGINT', onInt);
  try {
    let recipe = o.recipe;
    if (o.resume) {
      checkResumeWorldSize(path.dirname(o.resume), env.worldSize);
    } else {
      if (recipe.seed === null) recipe = { ...recipe, seed: agreeOnNumber(group, randomInt(0, 2 ** 31)) };
    }
    // Written at the first step, once rank 0 holds the run folder's lock and the trainer has
    // checked that the folder holds no other run (a checkpoint only ever follows it).
    if (rank0 && !o.resume) {
      ddp.onFirstStep = () =>
        writeRunInfo(o.outDir, { worldSize: env.worldSize, batchPerProcess: recipe.batchSize, globalBatch: recipe.batchSize * env.worldSize });
    }
    log(
      `data-parallel: ${env.worldSize} processes (this is rank ${env.rank}, store ${env.host}:${env.port}, ${group.usesNccl ? 'NCCL for CUDA tensors' : 'Gloo'}); ` +
        `batch size ${recipe.batchSize} per process, global batch ${recipe.batchSize * env.worldSize}; each epoch's order is split across the ranks`,
    );
    const summary = await train({
      ...o,
      recipe,
      device,
      log,
      progress: rank0 && o.progress,
      stop: ddp.stop,
      buildModel: ddp.wrapBuildModel(o.buildModel),
      hooks: ddp.hooks,
    });
    const c = ddp.totals;
    if (c.steps) {
      log(
        `data-parallel: ${(c.bytesPerStep / 1e6).toFixed(3)} MB of gradients all-reduced per step in ${c.buckets} bucket(s); ` +
          `communication not hidden by backward: ${(c.commMs / c.steps).toFixed(1)} ms per step (mean of ${c.steps})`,
      );
    }
    group.barrier().wait();
    return rank0 ? summary : null;
  } finally {
    process.off('SIGINT', onInt);
    ddp.dispose();
  }
}
