// Resident memory of ONNX Runtime sessions for shared vs unshared exports, per session option set.
//
//   npx tsc -p . && node dist/bench/onnx-memory.js [--repeats 3] [--out bench/results/onnx-memory.json]
//
// Each configuration runs in a fresh child process (so one session's allocations cannot hide
// another's): RSS before creating the session, after creating it, and after one inference
// (batch 1, one intra-op thread). RSS is taken under glibc's default malloc (what a user sees)
// and with small-allocation trimming (MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0),
// which returns freed temporaries to the system, so only memory the session keeps is counted.
// The weight bytes the session really holds come from the graph it built
// (optimizedModelFilePath), which does not depend on the allocator at all.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { recommendedSessionOptions, type OptimizationLevel } from '../src/export/ort-session.js';
import { encodeModel, decodeModel } from '../src/export/onnx-schema.js';
import { sharedConvWeights, tensorBytes } from '../src/export/onnx-inspect.js';
// The children must not load libtorch (it would sit in every measured process): the modules
// that need it are imported by the parent only, in main().

const MODELS = ['convmixer_256_16_shared', 'convmixer_256_16', 'se_resnet_d_2_full_shared', 'se_resnet_d_2'];
type ConfigName = 'default (all)' | 'basic' | 'disabled' | 'recommended' | 'recommended (extended)';
const CONFIGS: ConfigName[] = ['default (all)', 'basic', 'disabled', 'recommended', 'recommended (extended)'];
const TRIMMED_MALLOC = { MALLOC_MMAP_THRESHOLD_: '65536', MALLOC_TRIM_THRESHOLD_: '0' };

function sessionOptions(config: ConfigName, sharedKernels: number): ort.InferenceSession.SessionOptions {
  let base: ort.InferenceSession.SessionOptions;
  if (config === 'recommended') base = recommendedSessionOptions(sharedKernels);
  else if (config === 'recommended (extended)') base = recommendedSessionOptions(sharedKernels, { level: 'extended' });
  else base = { graphOptimizationLevel: (config === 'default (all)' ? 'all' : config) as OptimizationLevel, executionProviders: ['cpu'] };
  return { ...base, intraOpNumThreads: 1 };
}

interface ChildResult {
  rssBeforeMB: number;
  sessionMB: number;
  afterRunMB: number;
  latencyMs: number;
}

/** The child: one session, RSS deltas, a short latency measurement. */
async function child(file: string, config: ConfigName, sharedKernels: number, optimizedOut: string): Promise<void> {
  const rss = () => process.memoryUsage().rss / 1e6;
  const before = rss();
  const opts = sessionOptions(config, sharedKernels);
  if (optimizedOut) opts.optimizedModelFilePath = optimizedOut;
  const s = await ort.InferenceSession.create(file, opts);
  const afterCreate = rss();
  const input = new ort.Tensor('float32', new Float32Array(3 * 32 * 32).fill(0.5), [1, 3, 32, 32]);
  await s.run({ [s.inputNames[0]!]: input });
  const afterRun = rss();
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    await s.run({ [s.inputNames[0]!]: input });
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  // The fastest run: the least disturbed by other work on a shared machine.
  const r: ChildResult = { rssBeforeMB: before, sessionMB: afterCreate - before, afterRunMB: afterRun - before, latencyMs: times[0]! };
  console.log(JSON.stringify(r));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

function runChild(file: string, config: ConfigName, sharedKernels: number, trimmed: boolean, optimizedOut = ''): ChildResult {
  const self = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, [self, '--child', file, config, String(sharedKernels), optimizedOut], {
    encoding: 'utf8',
    env: { ...process.env, ...(trimmed ? TRIMMED_MALLOC : {}) },
  });
  if (r.status !== 0) throw new Error(`child for ${file} / ${config} failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildResult;
}

/** A model with no weights (input → Identity → output): the session's fixed cost. */
async function emptyModel(): Promise<Uint8Array> {
  const { OnnxGraphBuilder } = await import('../src/export/onnx-graph.js');
  const g = new OnnxGraphBuilder();
  const x = g.addInput('input', [1, 3, 32, 32]);
  g.addOutput(g.node('Identity', [x]), 'logits', [1, 3, 32, 32]);
  return encodeModel(g.toModel({ graphName: 'empty', producerVersion: 'bench' }));
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === '--child') {
    await child(args[1]!, args[2] as ConfigName, Number(args[3]), args[4] ?? '');
    return;
  }
  const opt = (name: string, d: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : d);
  const repeats = Number(opt('--repeats', '3'));
  const out = opt('--out', 'bench/results/onnx-memory.json');
  const t = await import('../src/tensor/index.js');
  const { exportOnnx } = await import('../src/export/export-onnx.js');
  const { modelFromRegistry } = await import('../src/export/model-source.js');
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-onnx-mem-'));
  try {
    const emptyFile = path.join(dir, 'empty.onnx');
    writeFileSync(emptyFile, await emptyModel());
    const baseline = {
      glibc: median(Array.from({ length: repeats }, () => runChild(emptyFile, 'default (all)', 0, false).sessionMB)),
      trimmed: median(Array.from({ length: repeats }, () => runChild(emptyFile, 'default (all)', 0, true).sessionMB)),
    };
    const rows = [];
    for (const name of MODELS) {
      t.manualSeed(0);
      const src = modelFromRegistry(name);
      const { bytes, stats } = exportOnnx(src.model, src.info);
      src.model.dispose();
      const file = path.join(dir, `${name}.onnx`);
      writeFileSync(file, bytes);
      const shared = sharedConvWeights(decodeModel(bytes)).length;
      for (const config of CONFIGS) {
        const optimized = path.join(dir, `${name}.${config.replace(/\W+/g, '_')}.optimized.onnx`);
        const glibc = Array.from({ length: repeats }, (_, i) => runChild(file, config, shared, false, i === 0 ? optimized : ''));
        const trimmed = Array.from({ length: repeats }, () => runChild(file, config, shared, true));
        const sessionGraph = decodeModel(readFileSync(optimized), optimized);
        const row = {
          model: name,
          params: src.info.params,
          sharedKernels: shared,
          fileMB: round(stats.fileBytes / 1e6, 3),
          weightMB: round(stats.weightBytes / 1e6, 3),
          config,
          sessionWeightMB: round(sessionGraph.graph.initializer.reduce((s, i) => s + tensorBytes(i), 0) / 1e6, 3),
          sessionSharedKernels: sharedConvWeights(sessionGraph).length,
          rssSessionMB: {
            glibc: round(median(glibc.map((r) => r.sessionMB)) - baseline.glibc),
            trimmed: round(median(trimmed.map((r) => r.sessionMB)) - baseline.trimmed),
          },
          rssAfterRunMB: {
            glibc: round(median(glibc.map((r) => r.afterRunMB)) - baseline.glibc),
            trimmed: round(median(trimmed.map((r) => r.afterRunMB)) - baseline.trimmed),
          },
          latencyMs: round(Math.min(...[...glibc, ...trimmed].map((r) => r.latencyMs)), 1),
        };
        rows.push(row);
        console.log(
          `${name.padEnd(26)} ${config.padEnd(22)} session weights ${row.sessionWeightMB.toFixed(2).padStart(6)} MB (shared kernels ${row.sessionSharedKernels}), RSS +${row.rssSessionMB.trimmed} MB trimmed / +${row.rssSessionMB.glibc} MB glibc, after run +${row.rssAfterRunMB.trimmed} / +${row.rssAfterRunMB.glibc} MB, ${row.latencyMs} ms`,
        );
      }
    }
    const result = {
      description:
        'ONNX Runtime (onnxruntime-node, CPU EP) session memory for kshare exports. RSS values are deltas over a weightless session (baselineMB), medians of `repeats` fresh processes; "trimmed" runs with MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 so freed temporaries do not count. sessionWeightMB: initializer bytes of the graph the session built (optimizedModelFilePath). latencyMs: fastest of 7 single-image inferences in each of the 2*repeats processes, 1 intra-op thread, on a machine shared with other work (indicative only).',
      configs: {
        'default (all)': "graphOptimizationLevel 'all' (ONNX Runtime's default)",
        basic: "graphOptimizationLevel 'basic'",
        disabled: "graphOptimizationLevel 'disabled'",
        recommended:
          "kshare's recommendedSessionOptions: 'all', plus optimization.disable_specified_optimizers = ConvBNFusion;ConvAddFusion;ConvMulFusion when the model has shared kernels",
        'recommended (extended)': "the same at graphOptimizationLevel 'extended' (no NCHWc layout pass, whose temporary weight copies stay in glibc's heap)",
      },
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', node: process.version, onnxruntimeNode: ort.env.versions.node ?? 'unknown' },
      repeats,
      baselineMB: { glibc: round(baseline.glibc), trimmed: round(baseline.trimmed) },
      date: new Date().toISOString().slice(0, 10),
      results: rows,
    };
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`wrote ${out}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
