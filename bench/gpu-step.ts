// GPU benchmark: one training step of the paper's models in kshare against the same models in
// PyTorch eager (bench/reference_gpu_step.py), in one run, on the same device.
//
//   node dist/bench/gpu-step.js [--device cuda] [--batch 128] [--warmup 5] [--steps 20] [--rounds 1]
//                               [--models a,b] [--only text] [--variants spec,...] [--out file]
//   node dist/bench/gpu-step.js --device cpu --batch 2 --warmup 1 --steps 2 \
//        --models convmixer_64_4_k5_p2_shared,se_resnet_d_2            # validation without a GPU
//
// Rows per model: the recipe's setting (ConvMixer: float16 autocast + GradScaler, AdamW, clip 1.0;
// SE-ResNet: float32, SGD momentum 0.9, wd 1e-4) and a "best" setting of kshare (--best-convmixer,
// --best-seresnet), plus any --variants. PyTorch runs the same setting in each row.
// Each step is timed between two device synchronisations after warm-up steps; the row reports the
// median (kshareMs, referenceMs, ratio = referenceMs / kshareMs: above 1 means kshare is faster) and,
// alongside, the mean over a block of steps synchronised only at its ends (blockRatio).
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync, renameSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import { GradScaler, clipGradNorm } from '../src/train/optim/index.js';
import { buildOptimizer } from '../src/train/build-optimizer.js';
import { loadRecipe, type OptimizerConfig } from '../src/train/recipe.js';
import { createModel } from '../src/models/registry.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';

const ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, '..'), path.resolve(here, '../..')]) if (existsSync(path.join(p, 'bench', 'reference_gpu_step.py'))) return p;
  throw new Error('gpu-step: cannot find bench/reference_gpu_step.py');
})();

const DEFAULT_MODELS = ['convmixer_256_16_shared', 'convmixer_256_16', 'se_resnet_d_2_full_shared', 'se_resnet_d_2'];
/** --device cpu (validation): the demo's small ConvMixer instead of ConvMixer-256/16 */
const DEFAULT_CPU_MODELS = ['convmixer_64_4_k5_p2_shared', 'convmixer_64_4_k5_p2', 'se_resnet_d_2_full_shared', 'se_resnet_d_2'];

type Precision = 'fp32' | 'fp16' | 'bf16';

/** What one row runs, on both sides. */
interface Setting {
  precision: Precision;
  /** loss scaling (GradScaler); the default for float16 */
  scaler: boolean;
  channelsLast: boolean;
  cudnnBenchmark: boolean;
}

/** `fp16+cl+bench` style: a precision, `cl` (channels_last), `bench` (cuDNN benchmark), `scaler` / `noscaler`. */
function parseSetting(spec: string): Setting {
  const s: Setting = { precision: 'fp32', scaler: false, channelsLast: false, cudnnBenchmark: false };
  let scaler: boolean | null = null;
  for (const tok of spec
    .split(/[+,]/)
    .map((x) => x.trim())
    .filter(Boolean)) {
    if (tok === 'fp32' || tok === 'fp16' || tok === 'bf16') s.precision = tok;
    else if (tok === 'cl' || tok === 'channels_last') s.channelsLast = true;
    else if (tok === 'bench' || tok === 'cudnn_benchmark') s.cudnnBenchmark = true;
    else if (tok === 'scaler') scaler = true;
    else if (tok === 'noscaler') scaler = false;
    else throw new Error(`gpu-step: unknown setting token '${tok}' in '${spec}' (fp32|fp16|bf16, cl, bench, scaler|noscaler)`);
  }
  s.scaler = scaler ?? s.precision === 'fp16';
  return s;
}

function settingName(s: Setting): string {
  return [
    s.precision,
    ...(s.channelsLast ? ['cl'] : []),
    ...(s.cudnnBenchmark ? ['bench'] : []),
    ...(s.scaler !== (s.precision === 'fp16') ? [s.scaler ? 'scaler' : 'noscaler'] : []),
  ].join('+');
}

interface Family {
  recipe: string;
  baseline: string;
  optimizer: OptimizerConfig;
  clip: number | null;
}

function family(model: string, recipes: Map<string, Family>): Family {
  const key = model.startsWith('convmixer_') ? 'convmixer' : model.startsWith('se_resnet_') ? 'seresnet' : null;
  if (!key) throw new Error(`gpu-step: '${model}' is neither a convmixer_* nor a se_resnet_* model`);
  let f = recipes.get(key);
  if (!f) {
    const r = loadRecipe(key);
    f = { recipe: key, baseline: key === 'convmixer' ? 'fp16' : 'fp32', optimizer: r.optimizer, clip: r.clipGradNorm };
    recipes.set(key, f);
  }
  return f;
}

interface Case {
  name: string;
  model: string;
  label: string;
  setting: Setting;
  fam: Family;
  /** what changed for validation on the CPU */
  note?: string;
}

/** The same job for both sides (the reference gets it as JSON). */
interface Job {
  model: string;
  classes: number;
  device: string;
  batch: number;
  size: number;
  warmup: number;
  steps: number;
  precision: Precision;
  scaler: boolean;
  channelsLast: boolean;
  cudnnBenchmark: boolean;
  optimizer: OptimizerConfig;
  clip: number | null;
  threads: number | null;
  seed: number;
}

interface Samples {
  samplesMs: number[];
  blockMs: number;
  skipped: number;
}

function timeKshare(job: Job): Samples {
  const { device } = job;
  const cuda = device.startsWith('cuda');
  if (job.threads !== null) t.setNumThreads(job.threads);
  t.setCudnnBenchmark(job.cudnnBenchmark);
  t.manualSeed(job.seed);
  const model = createModel(job.model, { classes: job.classes });
  const memoryFormat = job.channelsLast ? ('channels_last' as const) : ('contiguous' as const);
  model.to({ device, memoryFormat });
  model.train();
  const opt = buildOptimizer(model, job.optimizer);
  const params = opt.groups.flatMap((g) => g.params);
  const scaler = new GradScaler({ enabled: job.scaler });
  const gen = new t.Generator(job.seed + 1);
  const [x, y] = t.tidy(() => {
    const xc = t.randn([job.batch, 3, job.size, job.size], { generator: gen });
    const yc = t.randint(0, job.classes, [job.batch], { generator: gen });
    return [xc.to({ device, memoryFormat }), yc.to(device)];
  });
  const amp = job.precision !== 'fp32';
  const ampDtype = job.precision === 'bf16' ? ('bfloat16' as const) : ('float16' as const);
  const ampDevice = cuda ? ('cuda' as const) : ('cpu' as const);
  let stepped = true;
  const step = () =>
    t.tidy(() => {
      const logits = t.autocast({ device: ampDevice, dtype: ampDtype, enabled: amp }, () => model.forward(x));
      const loss = t.crossEntropy(logits.to('float32'), y);
      scaler.scale(loss).backward();
      if (job.clip !== null) {
        scaler.unscale(opt);
        clipGradNorm(params, job.clip);
      }
      stepped = scaler.step(opt);
      scaler.update();
      opt.zeroGrad();
    });
  const out: Samples = { samplesMs: [], blockMs: 0, skipped: 0 };
  try {
    for (let i = 0; i < job.warmup; i++) step();
    t.synchronize();
    const live = t.liveTensors();
    for (let i = 0; i < job.steps; i++) {
      t.synchronize();
      const t0 = performance.now();
      step();
      t.synchronize();
      out.samplesMs.push(performance.now() - t0);
      if (!stepped) out.skipped++;
    }
    t.synchronize();
    const t0 = performance.now();
    for (let i = 0; i < job.steps; i++) step();
    t.synchronize();
    out.blockMs = (performance.now() - t0) / job.steps;
    // the optimizer state exists after the first step: from then on a step must not hold more tensors
    if (job.warmup > 0 && t.liveTensors() !== live)
      throw new Error(`gpu-step: ${job.model} holds ${t.liveTensors() - live} more tensors after the timed steps (leak)`);
  } finally {
    scaler.dispose();
    opt.dispose();
    model.dispose();
    t.dispose([x, y]);
    t.setCudnnBenchmark(false);
  }
  return out;
}

interface Reference extends Samples {
  torch: string;
  device: string;
  scaler: boolean;
}

function runPython(python: string, args: string[], what: string): string {
  const r = spawnSync(python, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`gpu-step: cannot run ${python} (${what}): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`gpu-step: ${python} ${what} failed (${r.status ?? r.signal}):\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return lines[lines.length - 1]!;
}

function timeReference(python: string, job: Job): Reference {
  return JSON.parse(
    runPython(python, [path.join(ROOT, 'bench', 'reference_gpu_step.py'), '--job', JSON.stringify(job)], `bench/reference_gpu_step.py (${job.model})`),
  ) as Reference;
}

interface Probe {
  torch: string;
  cuda: boolean;
  device: string;
}

/** The first interpreter that imports torch: --python, $KSHARE_TORCH_PYTHON, python3, /usr/bin/python3. */
function findPython(explicit: string | undefined, device: string): { python: string; probe: Probe } {
  const candidates = explicit ? [explicit] : process.env.KSHARE_TORCH_PYTHON ? [process.env.KSHARE_TORCH_PYTHON] : ['python3', '/usr/bin/python3'];
  const errors: string[] = [];
  for (const python of candidates) {
    try {
      const probe = JSON.parse(runPython(python, [path.join(ROOT, 'bench', 'reference_gpu_step.py'), '--probe', device], 'probe')) as Probe;
      return { python, probe };
    } catch (e) {
      errors.push((e as Error).message.split('\n').slice(0, 3).join(' '));
    }
  }
  throw new Error(`gpu-step: no Python with torch found (set --python or KSHARE_TORCH_PYTHON):\n${errors.join('\n')}`);
}

interface Row {
  name: string;
  kshareMs: number;
  referenceMs: number;
  ratio: number;
  /** mean ms per step over a block of --steps steps synchronised only at its ends */
  kshareBlockMs: number;
  referenceBlockMs: number;
  blockRatio: number;
  setting: string;
  optimizer: string;
  /** timed steps that a GradScaler skipped (inf/NaN gradients) */
  kshareSkipped: number;
  referenceSkipped: number;
  note?: string;
}

interface FailedRow {
  name: string;
  error: string;
}

function main(): void {
  const program = new Command()
    .name('gpu-step')
    .description('Time a training step of ConvMixer-256/16 and SE-ResNet d=2 (shared and unshared) in kshare and in PyTorch eager on one device')
    .option('--device <device>', 'cuda, or cpu to validate the bench without a GPU', 'cuda')
    .option('--batch <n>', 'batch size', '128')
    .option('--size <n>', 'image size (square)', '32')
    .option('--classes <n>', 'classes', '10')
    .option('--warmup <n>', 'untimed steps first (also cuDNN autotuning)', '5')
    .option('--steps <n>', 'timed steps (per-step median; then a block of as many steps)', '20')
    .option('--rounds <n>', 'alternations of kshare and PyTorch per row', '1')
    .option('--models <list>', `comma-separated model names (default ${DEFAULT_MODELS.join(',')}; with --device cpu ${DEFAULT_CPU_MODELS.join(',')})`)
    .option('--only <text>', 'run only the rows whose name contains text')
    .option('--best-convmixer <spec>', "kshare's best setting for ConvMixer rows (tokens fp32|fp16|bf16, cl, bench, scaler|noscaler)", 'fp16+cl+bench')
    .option('--best-seresnet <spec>', "kshare's best setting for SE-ResNet rows", 'bf16+cl+bench')
    .option('--variants <list>', 'extra settings to time for every model, comma-separated specs such as bf16+cl+bench,fp16+bench')
    .option('--no-best', 'skip the best rows')
    .option('--threads <n>', 'CPU intra-op threads for both sides (default: 1 on cpu, libtorch default on cuda)')
    .option('--python <exe>', 'Python with torch for the reference (default: $KSHARE_TORCH_PYTHON, python3, /usr/bin/python3)')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'gpu-step.json'))
    .parse();
  const o = program.opts<{
    device: string;
    batch: string;
    size: string;
    classes: string;
    warmup: string;
    steps: string;
    rounds: string;
    models?: string;
    only?: string;
    bestConvmixer: string;
    bestSeresnet: string;
    variants?: string;
    best: boolean;
    threads?: string;
    python?: string;
    out: string;
  }>();
  const int = intOption(program);
  const batch = int('batch', o.batch, 1);
  const size = int('size', o.size, 8);
  const classes = int('classes', o.classes, 2);
  const warmup = int('warmup', o.warmup, 0);
  const steps = int('steps', o.steps, 1);
  const rounds = int('rounds', o.rounds, 1);
  const device = o.device;
  const cuda = device.startsWith('cuda');
  if (!cuda && device !== 'cpu') program.error(`gpu-step: --device must be cuda, cuda:N or cpu, got '${device}'`);
  const threads = o.threads !== undefined ? int('threads', o.threads, 1) : cuda ? null : 1;
  const info = t.runtimeInfo();
  if (cuda && !info.cudaAvailable)
    program.error(
      `gpu-step: kshare's libtorch ${info.torchVersion} has no CUDA (build the addon against a CUDA libtorch: TORCH_DIR=... bash native/build.sh), or use --device cpu`,
    );

  const recipes = new Map<string, Family>();
  const models = o.models
    ? o.models
        .split(',')
        .map((m) => m.trim())
        .filter(Boolean)
    : cuda
      ? DEFAULT_MODELS
      : DEFAULT_CPU_MODELS;
  const cases: Case[] = [];
  for (const model of models) {
    createModel(model, { classes }).dispose(); // unknown names fail here, before anything is timed
    const fam = family(model, recipes);
    const specs: [string, string][] = [[fam.baseline, fam.baseline]];
    if (o.best) specs.push(['best', fam.recipe === 'convmixer' ? o.bestConvmixer : o.bestSeresnet]);
    for (const v of o.variants
      ? o.variants
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean)
      : [])
      specs.push([settingName(parseSetting(v)), v]);
    for (const [label, spec] of specs) {
      const setting = parseSetting(spec);
      const c: Case = { name: `${model}/${label}`, model, label, setting, fam };
      if (!cuda && setting.precision === 'fp16') {
        // float16 autocast is CUDA-only in libtorch: on the CPU the row runs float32 instead
        setting.precision = 'fp32';
        c.name = `${model}/${label}-as-fp32-on-cpu`;
        c.note = `CPU validation: float16 autocast is CUDA-only, ran float32 (kshare's GradScaler ${setting.scaler ? 'still on, CPU path' : 'off'}; PyTorch's CUDA GradScaler disables itself on the CPU)`;
      }
      if (!cuda && setting.cudnnBenchmark) c.note = [c.note, 'cuDNN benchmark has no effect on the CPU'].filter(Boolean).join('; ');
      cases.push(c);
    }
  }
  const selected = cases.filter((c) => !o.only || c.name.includes(o.only));
  if (!selected.length) program.error(`gpu-step: no row matches --only '${o.only}' (rows: ${cases.map((c) => c.name).join('; ')})`);

  const { python, probe } = findPython(o.python, device);
  if (cuda && !probe.cuda) throw new Error(`gpu-step: ${python}'s torch ${probe.torch} has no CUDA`);
  console.log(
    `gpu-step: kshare libtorch ${info.torchVersion}, reference torch ${probe.torch} (${python}), device ${probe.device}; batch ${batch}, ${warmup} warm-up + ${steps} timed steps, ${rounds} round(s)`,
  );

  const rows: (Row | FailedRow)[] = [];
  const cpus = os.cpus();
  const header = {
    machine: cuda ? probe.device : `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores (CPU validation run)`,
    device,
    torch: probe.torch,
    kshareLibtorch: info.torchVersion,
    batch,
    size,
    classes,
    warmup,
    steps,
    rounds,
    method:
      `synthetic batch (randn images, random labels) resident on the device; hard-label cross-entropy on float32 logits; ` +
      `per row kshare then PyTorch eager (bench/reference_gpu_step.py, models from test/fixtures/ref_models.py) in a child process, ${rounds} round(s); ` +
      `${warmup} untimed warm-up steps, then ${steps} steps each timed between two device synchronisations (kshareMs/referenceMs: median; ratio = referenceMs / kshareMs), ` +
      `then a block of ${steps} steps synchronised only at its ends (blockMs: mean per step). Recipe optimisers (recipes/convmixer.json, recipes/seresnet.json) through buildOptimizer / torch.optim with the same parameter groups; ` +
      `setting tokens: precision (fp16 = float16 autocast + GradScaler, bf16 = bfloat16 autocast, fp32), cl = channels_last model and input, bench = cuDNN benchmark; TF32 left at libtorch's defaults on both sides` +
      (threads !== null ? `; ${threads} CPU intra-op thread(s) on both sides` : ''),
  };
  // written after every row, so that a run cut short by a time limit still leaves its rows
  const write = (complete: boolean) => {
    mkdirSync(path.dirname(path.resolve(o.out)), { recursive: true });
    const tmp = `${o.out}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ ...header, ...(complete ? {} : { incomplete: `${rows.length} of ${selected.length} rows` }), rows }, null, 2) + '\n');
    renameSync(tmp, o.out);
  };
  const failed: string[] = [];
  for (const c of selected) {
    // a failing row (out of memory, an op missing on this libtorch) is recorded and the run goes on
    let row: Row | FailedRow;
    try {
      row = timeRow(c);
    } catch (e) {
      const msg = (e as Error).message;
      row = { name: c.name, error: msg.length > 2000 ? `${msg.slice(0, 2000)}...` : msg };
      failed.push(c.name);
      console.error(`${c.name}: FAILED: ${msg}`);
    }
    rows.push(row);
    write(rows.length === selected.length);
  }
  console.log(`wrote ${o.out}`);
  if (failed.length) {
    console.error(`gpu-step: ${failed.length} row(s) failed: ${failed.join(', ')}`);
    process.exitCode = 1;
  }

  function timeRow(c: Case): Row {
    const job: Job = {
      model: c.model,
      classes,
      device,
      batch,
      size,
      warmup,
      steps,
      ...c.setting,
      optimizer: c.fam.optimizer,
      clip: c.fam.clip,
      threads,
      seed: 0,
    };
    const mine: Samples = { samplesMs: [], blockMs: 0, skipped: 0 };
    const ref: Samples = { samplesMs: [], blockMs: 0, skipped: 0 };
    let refScaler = job.scaler;
    for (let r = 0; r < rounds; r++) {
      const k = timeKshare(job);
      mine.samplesMs.push(...k.samplesMs);
      mine.blockMs += k.blockMs / rounds;
      mine.skipped += k.skipped;
      const p = timeReference(python, job);
      ref.samplesMs.push(...p.samplesMs);
      ref.blockMs += p.blockMs / rounds;
      ref.skipped += p.skipped;
      refScaler = p.scaler;
    }
    const [km, rm] = [median(mine.samplesMs), median(ref.samplesMs)];
    const opt =
      c.fam.optimizer.type === 'sgd'
        ? `SGD lr ${c.fam.optimizer.lr} momentum ${c.fam.optimizer.momentum} wd ${c.fam.optimizer.weightDecay}`
        : `AdamW lr ${c.fam.optimizer.lr} eps ${c.fam.optimizer.eps} wd ${c.fam.optimizer.weightDecay}${c.fam.optimizer.noDecayOnNormsAndBiases ? ' (none on norms/biases)' : ''}`;
    const row: Row = {
      name: c.name,
      kshareMs: round(km, 3),
      referenceMs: round(rm, 3),
      ratio: round(rm / km, 3),
      kshareBlockMs: round(mine.blockMs, 3),
      referenceBlockMs: round(ref.blockMs, 3),
      blockRatio: round(ref.blockMs / mine.blockMs, 3),
      setting: settingName(c.setting) + (job.scaler ? ` (GradScaler${refScaler ? '' : '; PyTorch side without'})` : ''),
      optimizer: opt + (c.fam.clip !== null ? `, clip ${c.fam.clip}` : ''),
      kshareSkipped: mine.skipped,
      referenceSkipped: ref.skipped,
      ...(c.note ? { note: c.note } : {}),
    };
    const f = (v: number) => v.toFixed(2).padStart(9);
    console.log(
      `${row.name.padEnd(48)} kshare ${f(km)} ms, torch ${f(rm)} ms, ratio ${row.ratio.toFixed(3)} | block ${f(mine.blockMs)} / ${f(ref.blockMs)} ms, ratio ${row.blockRatio.toFixed(3)}  [${row.setting}]`,
    );
    return row;
  }
}

main();
