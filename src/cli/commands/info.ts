// `kshare info <model>`: layer table, parameter counts, weight bytes, MACs and share groups.
import type { Command } from 'commander';
import { createModel, loadModelConfigFile, modelSummary, formatSummary, loadWeights } from '../../models/index.js';
import { applySharingPlan, parseSharingPlan } from '../../nn/index.js';

interface InfoOptions {
  classes: string;
  json?: boolean;
  config?: string[];
  weights?: string;
  depth?: string;
  plans?: boolean;
  plan?: string;
}

export function register(program: Command): void {
  program
    .command('info')
    .description('describe a model: layers, parameters (shared kernels once), weight bytes, MACs per 32x32 image, share groups')
    .argument('<model>', 'registered model name (see `kshare models`)')
    .option('--classes <n>', 'number of classes', '10')
    .option('--json', 'print one JSON object')
    .option('--config <file...>', 'JSON model config file(s) to register first')
    .option('--weights <file>', 'check that a .safetensors weights file fits the model')
    .option('--depth <n>', 'show layers down to this nesting depth only')
    .option('--plans', 'also list what each sharing plan would save')
    .option('--plan <spec>', 'apply a sharing plan first: none, isomorphic, consecutive:K, strided:M, groups:a,b;c,d [/weights] or JSON')
    .action((name: string, o: InfoOptions) => {
      for (const f of o.config ?? []) loadModelConfigFile(f);
      const classes = Number(o.classes);
      if (!Number.isInteger(classes) || classes < 1) throw new Error(`--classes must be a positive integer, got '${o.classes}'`);
      const model = createModel(name, { classes });
      try {
        if (o.plan) applySharingPlan(model, parseSharingPlan(o.plan));
        if (o.weights) loadWeights(model, o.weights);
        const s = modelSummary(model, name, classes);
        if (o.json) {
          console.log(JSON.stringify(s));
          return;
        }
        const maxDepth = o.depth === undefined ? undefined : Number(o.depth);
        if (maxDepth !== undefined && !(Number.isInteger(maxDepth) && maxDepth >= 0))
          throw new Error(`--depth must be a non-negative integer, got '${o.depth}'`);
        console.log(formatSummary(s, { maxDepth }));
        if (o.weights) console.log(`weights ${o.weights}: loaded, every tensor fits`);
        if (o.plans) {
          console.log('sharing plans (params for the whole model; saved vs. no sharing):');
          for (const p of s.sharingPlans) {
            console.log(
              `  ${p.name.padEnd(32)} kernels ${String(p.kernels).padStart(4)}  params ${p.params.toLocaleString('en-US').padStart(11)}  saved ${p.savedParams.toLocaleString('en-US').padStart(11)} (${p.savedBytes.toLocaleString('en-US')} bytes)`,
            );
          }
        }
      } finally {
        model.dispose();
      }
    });
}
