// `kshare sweep <spec.json>`: trains every model x plan x seed of a spec as ordinary run folders,
// skipping finished runs and resuming interrupted ones; --dry-run lists and times them.
import type { Command } from 'commander';
import path from 'node:path';
import { readSweepSpec, planSweep, runSweep, runState, RUNS_DIR } from '../../train/sweep.js';
import { probeSweep } from '../../train/sweep-probe.js';
import { formatDuration } from '../../train/run-log.js';
import { positiveInt } from './train.js';

interface SweepCliOptions {
  dryRun?: boolean;
  jobs: string;
  threads?: string;
  out?: string;
  probe: boolean;
  probeSteps: string;
}

const SPEC_HELP = `
Spec file (JSON; paths are relative to the spec file):
  name         short name of the sweep (labels the report)
  recipe       recipe name (demo, convmixer, seresnet) or a .json path
  set          recipe overrides, as \`kshare train --set\`: ["epochs=3", "optimizer.lr=0.005"] or {"epochs": 3}
  model        one model name (see \`kshare models\`), or
  models       a list of model names or inline configs {"name": ..., "architecture": ..., ...}
  plans        optional: sharing plans applied to each model: none, depthwise, pointwise, both
               (ConvMixer), isomorphic, consecutive:K, strided:M, groups:a,b;c,d[/weights], a plan
               object, a name from \`kshare info <model> --plans\`, or {"plan": ..., "seeds": [...]}
  seeds        seeds of every configuration without its own "seeds"
  dataset      cifar10, cifar100 or an image folder; dataDir, device, threads, channelsLast optional
  out          output folder: <out>/sweep.json, <out>/runs/<config>-s<seed>/ (log.jsonl, summary.json,
               checkpoint.safetensors, steps.jsonl, train.log)

Example:
  { "name": "plans", "recipe": "demo", "set": ["epochs=3"],
    "model": "convmixer_64_4_k5_p2",
    "plans": ["none", "both", {"plan": "depthwise", "seeds": [0]}, "consecutive:2"],
    "seeds": [0, 1], "dataset": "cifar10", "out": "../runs/plans" }

A rerun of the same spec skips finished runs and resumes interrupted ones. Ctrl-C asks every
running run to checkpoint and stop (exit code 130). \`kshare report <out>\` summarises the sweep.
More: docs/sweeps.md.`;

export function register(program: Command): void {
  program
    .command('sweep')
    .description('train a grid of models / sharing plans / seeds as run folders; resumable; --dry-run lists and times it')
    .argument('<spec>', 'sweep spec (.json), see below')
    .option('--dry-run', 'list the runs with parameter counts and an estimated time (from a short timing probe); train nothing')
    .option('--jobs <n>', 'runs trained at the same time, each in its own process and folder', '1')
    .option('--threads <n>', "libtorch threads per run (default: the spec's; with --jobs > 1, cores / jobs)")
    .option('--out <dir>', 'output folder (default: the spec\'s "out")')
    .option('--no-probe', 'with --dry-run: skip the timing probe')
    .option('--probe-steps <n>', 'training steps timed per configuration by the probe', '6')
    .addHelpText('after', SPEC_HELP)
    .action(async (specFile: string, o: SweepCliOptions) => {
      const jobs = positiveInt('--jobs', o.jobs);
      const threads = o.threads === undefined ? undefined : positiveInt('--threads', o.threads);
      const spec = readSweepSpec(specFile);
      const plan = planSweep(spec, specFile, { out: o.out });
      const log = (l: string) => console.log(l);
      if (o.dryRun) {
        await dryRun(plan, { jobs, threads, probe: o.probe, probeSteps: positiveInt('--probe-steps', o.probeSteps), log });
        return;
      }
      const stop = new AbortController();
      const hard = new AbortController();
      const onInt = () => {
        if (stop.signal.aborted) {
          log('\nsecond Ctrl-C: the runs quit without waiting for their checkpoints');
          hard.abort();
          return;
        }
        log('\nCtrl-C: every running run finishes its step and writes a checkpoint (Ctrl-C again to quit at once)');
        stop.abort();
      };
      // Runs live in their own process group, so every signal that ends a terminal session is forwarded.
      const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
      for (const sig of signals) process.on(sig, onInt);
      try {
        const r = await runSweep(plan, { jobs, threads, log, stop: stop.signal, hardStop: hard.signal });
        if (r.status === 'interrupted') process.exitCode = 130;
        else if (r.status === 'failed') {
          throw new Error(
            `${r.failed.length} run(s) failed: ${r.failed.map((f) => `${f.id} (exit ${f.code}: ${f.tail.filter((l) => l.trim()).slice(-1)[0] ?? 'no output'})`).join('; ')}`,
          );
        }
      } finally {
        for (const sig of signals) process.off(sig, onInt);
      }
    });
}

async function dryRun(
  plan: ReturnType<typeof planSweep>,
  o: { jobs: number; threads?: number; probe: boolean; probeSteps: number; log: (l: string) => void },
): Promise<void> {
  const { log } = o;
  const recipe = plan.runs[0]!.recipe;
  log(
    `sweep ${plan.spec.name}: ${plan.runs.length} runs, recipe ${recipe.name} (${recipe.epochs} epoch(s), batch ${recipe.batchSize}, lr ${recipe.optimizer.lr}), dataset ${plan.spec.dataset}, device ${plan.device}; output ${path.join(plan.out, RUNS_DIR)}`,
  );
  const states = plan.runs.map((r) => runState(r));
  const timing = o.probe && states.some((s) => s.kind !== 'done') ? await probeSweep(plan, { steps: o.probeSteps, log, threads: o.threads }) : null;
  const n = (x: number) => x.toLocaleString('en-US');
  const rows = plan.runs.map((r, i) => {
    const st = states[i]!;
    const est = timing?.runSeconds.get(r.id);
    const left = st.kind === 'done' ? 0 : est === undefined ? null : st.kind === 'resume' ? est * Math.max(0, 1 - st.epochsDone / r.recipe.epochs) : est;
    return {
      cells: [
        r.id,
        r.model,
        r.plan ?? '-',
        String(r.seed),
        n(r.trainableParams),
        n(r.unsharedParams),
        n(r.macs),
        st.kind === 'done' ? 'finished' : st.kind === 'resume' ? `resume after epoch ${st.epochsDone}` : 'new',
        left === null ? '?' : formatDuration(left),
      ],
      left,
    };
  });
  const head = ['run', 'model', 'plan', 'seed', 'trainable', 'unshared', 'MACs/image', 'state', 'est. time'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r.cells[i]!.length)));
  const right = new Set([3, 4, 5, 6, 8]);
  const line = (c: string[]) =>
    c
      .map((x, i) => (right.has(i) ? x.padStart(widths[i]!) : x.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  log('');
  log(line(head));
  log(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) log(line(r.cells));
  log('');
  if (timing) {
    const total = rows.reduce((s, r) => s + (r.left ?? 0), 0);
    log(
      `estimate: ${formatDuration(total)} for the runs left, one after another (${n(timing.trainImages)} training images, ${timing.itersPerEpoch} steps per epoch, ` +
        `${n(timing.testImages)} test images; start-up and data loading ${formatDuration(timing.startupSeconds + timing.dataSeconds)} per run)` +
        (o.jobs > 1 ? `; with --jobs ${o.jobs} at best ${formatDuration(total / o.jobs)} if the jobs do not compete for cores` : ''),
    );
  } else if (!o.probe) {
    log('no timing probe (--no-probe): times unknown');
  } else {
    log('every run is finished');
  }
}
