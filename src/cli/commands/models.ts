// Placeholder: replaced by the command's implementation.
import type { Command } from 'commander';

export function register(program: Command): void {
  program.command('models').description('(not implemented yet)').action(() => {
    throw new Error('models: not implemented yet');
  });
}
