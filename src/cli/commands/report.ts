// `kshare report`: a Markdown table and SVG charts for one or more run folders.
import type { Command } from 'commander';
import { writeReport } from '../../train/report.js';

export function register(program: Command): void {
  program
    .command('report')
    .description('summarise run folders: report.md (table) plus curves.svg and accuracy-vs-params.svg')
    .argument('<runs...>', 'run folders written by `kshare train` (each with log.jsonl / summary.json)')
    .option('--out <dir>', 'where to write the report', 'report')
    .action(async (runs: string[], o: { out: string }) => {
      const files = await writeReport(runs, o.out);
      console.log(`wrote ${files.markdown}, ${files.curves} and ${files.params}`);
    });
}
