#!/usr/bin/env node
// The `kshare` command line. Each command lives in commands/<name>.ts and registers itself.
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as models from './commands/models.js';
import * as info from './commands/info.js';
import * as train from './commands/train.js';
import * as evaluate from './commands/eval.js';
import * as report from './commands/report.js';
import * as demo from './commands/demo.js';
import * as exporter from './commands/export.js';
import * as predict from './commands/predict.js';
import * as selfcheck from './commands/selfcheck.js';
import * as sweep from './commands/sweep.js';
import { retainFreedMemory } from '../tensor/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = JSON.parse(readFileSync(path.resolve(here, '../../../package.json'), 'utf8')) as { version: string };

const program = new Command()
  .name('kshare')
  .description('Deep CNNs with inter-layer kernel-sharing: define, train, measure and export')
  .version(pkg.version)
  .showHelpAfterError();

// Training and evaluation reallocate every activation each step: keep freed memory for reuse.
retainFreedMemory();

for (const cmd of [models, info, train, evaluate, sweep, report, demo, exporter, predict, selfcheck]) cmd.register(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  // Expected failures (bad input, missing files) print one clear line, not a stack trace.
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`kshare: ${msg}\n`);
  if (process.env.KSHARE_DEBUG && err instanceof Error) {
    process.stderr.write(`${err.stack}\n`);
    const full = (err as { libtorchMessage?: string }).libtorchMessage;
    if (full) process.stderr.write(`libtorch's full message:\n${full}\n`);
  }
  process.exit(1);
});
