// `kshare export`: a checkpoint or a freshly initialised registered model → a standard ONNX file
// in which every shared kernel is stored once.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, type Command } from 'commander';
import * as t from '../../tensor/index.js';
import { exportOnnx, writeOnnxFile } from '../../export/export-onnx.js';
import { modelFromCheckpoint, modelFromRegistry, type ModelSource } from '../../export/model-source.js';
import { OPSET } from '../../export/onnx-graph.js';
import { writeWebBundle } from '../../export/web-bundle.js';

interface ExportCliOptions {
  checkpoint?: string;
  model?: string;
  out: string;
  fp16?: boolean;
  web?: string;
  classes?: number;
  seed: number;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function kshareVersion(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return (JSON.parse(readFileSync(path.resolve(here, '../../../../package.json'), 'utf8')) as { version: string }).version;
}

export const mb = (bytes: number) => `${(bytes / 1e6).toFixed(bytes < 1e7 ? 3 : 1)} MB`;

export function register(program: Command): void {
  program
    .command('export')
    .description(`write a model as ONNX (opset ${OPSET}); shared kernels are stored once and BatchNorm stays a separate node`)
    .option('--checkpoint <file>', 'a kshare checkpoint (.safetensors) to export')
    .option('--model <name>', 'a registered model to export with fresh weights (to check deployment size before training)')
    .requiredOption('--out <file>', 'the .onnx file to write')
    .option('--fp16', 'store weights as float16 (half the download; computation stays float32)')
    .option('--web <dir>', 'also write a self-contained copy of the web demo with this model into <dir> (serve it with any static server)')
    .option('--classes <n>', 'classes of a --model export (default 10)', positiveInt)
    .option('--seed <n>', 'random seed for a --model export', positiveIntOrZero, 0)
    .addHelpText(
      'after',
      '\nExamples:\n  kshare export --model convmixer_256_16_shared --out model.onnx\n  kshare export --checkpoint runs/c10/checkpoint.safetensors --out model.onnx --fp16 --web site/',
    )
    .action((o: ExportCliOptions) => {
      if (!o.checkpoint === !o.model) throw new Error('export: give exactly one of --checkpoint <file> or --model <name>');
      if (o.checkpoint && o.classes !== undefined) throw new Error('export: --classes applies to --model only (a checkpoint knows its classes)');
      if (!o.out.toLowerCase().endsWith('.onnx')) throw new Error(`export: --out should name a .onnx file, got '${o.out}'`);
      t.manualSeed(o.seed);
      const src: ModelSource = o.checkpoint ? modelFromCheckpoint(o.checkpoint) : modelFromRegistry(o.model!, { classes: o.classes });
      src.info.source ??= `fresh weights (untrained), seed ${o.seed}`;
      try {
        const { bytes, stats } = exportOnnx(src.model, src.info, { fp16: !!o.fp16, producerVersion: kshareVersion() });
        writeOnnxFile(o.out, bytes);
        console.log(`exported ${src.info.model} (${src.info.source}) to ${o.out}`);
        console.log(`  trainable parameters  ${src.info.params.toLocaleString('en-US')}`);
        console.log(
          `  weights               ${stats.initializers} tensors, ${mb(stats.weightBytes)} (${o.fp16 ? 'float16' : 'float32'})${stats.sharedWeights ? `; ${stats.sharedWeights} of them shared, used ${stats.sharedUses} times` : ', none shared'}`,
        );
        console.log(`  file                  ${mb(stats.fileBytes)}, ${stats.nodes} nodes, opset ${OPSET}`);
        console.log(
          `  input                 float32 [batch, ${src.info.input.channels}, ${src.info.input.height}, ${src.info.input.width}], normalised with mean ${JSON.stringify(src.info.input.mean)} std ${JSON.stringify(src.info.input.std)}`,
        );
        if (o.web) {
          const files = writeWebBundle(o.web, bytes);
          console.log(`  web demo              ${o.web}/ (${files.length} files; serve the folder and open index.html)`);
        }
      } finally {
        src.model.dispose();
      }
    });
}

function positiveIntOrZero(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer');
  return n;
}
