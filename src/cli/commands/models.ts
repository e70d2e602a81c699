// `kshare models`: lists the registered models.
import type { Command } from 'commander';
import { listModels, loadModelConfigFile, createModel, namePatterns } from '../../models/index.js';

export function register(program: Command): void {
  program
    .command('models')
    .description('list the registered models (add your own with --config <file.json>)')
    .option('--config <file...>', 'JSON model config file(s) to register first')
    .option('--classes <n>', 'classes used for the parameter counts', '10')
    .option('--json', 'print one JSON array')
    .action((o: { config?: string[]; classes: string; json?: boolean }) => {
      for (const f of o.config ?? []) loadModelConfigFile(f);
      const classes = Number(o.classes);
      if (!Number.isInteger(classes) || classes < 1) throw new Error(`--classes must be a positive integer, got '${o.classes}'`);
      const rows = listModels().map((m) => {
        const model = createModel(m.name, { classes });
        try {
          return { ...m, params: model.numParameters() };
        } finally {
          model.dispose();
        }
      });
      if (o.json) {
        console.log(JSON.stringify(rows));
        return;
      }
      const w = Math.max(...rows.map((r) => r.name.length));
      const pw = Math.max(...rows.map((r) => r.params.toLocaleString('en-US').length), 'params'.length);
      console.log(`${'model'.padEnd(w)}  ${'params'.padStart(pw)}  description`);
      for (const r of rows) console.log(`${r.name.padEnd(w)}  ${r.params.toLocaleString('en-US').padStart(pw)}  ${r.description}`);
      console.log(`\nparams: unique trainable parameters for ${classes} classes. Names of the form ${namePatterns().join(', ')} also work.`);
    });
}
