// Placeholder: replaced by the command's implementation.
import type { Command } from 'commander';

export function register(program: Command): void {
  program.command('predict').description('(not implemented yet)').action(() => {
    throw new Error('predict: not implemented yet');
  });
}
