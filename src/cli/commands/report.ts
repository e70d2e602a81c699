// `kshare report`: a Markdown report and SVG charts for run folders and sweep folders.
import type { Command } from 'commander';
import { writeReport, defaultReportDir } from '../../train/report.js';

export function register(program: Command): void {
  program
    .command('report')
    .description(
      'summarise run or sweep folders: report.md (per-configuration mean and spread over seeds, per-run table) plus curves.svg and accuracy-vs-params.svg',
    )
    .argument('<folders...>', 'run folders written by `kshare train` or sweep folders written by `kshare sweep`')
    .option('--out <dir>', 'where to write the report (default: the sweep folder when given one, else ./report)')
    .action(async (runs: string[], o: { out?: string }) => {
      const files = await writeReport(runs, o.out ?? defaultReportDir(runs));
      console.log(`wrote ${files.markdown}, ${files.curves} and ${files.params}`);
    });
}
