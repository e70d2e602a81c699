// Placeholder: replaced by the command's implementation.
import type { Command } from 'commander';

export function register(program: Command): void {
  program.command('demo').description('(not implemented yet)').action(() => {
    throw new Error('demo: not implemented yet');
  });
}
