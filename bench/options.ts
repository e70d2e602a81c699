// Command-line option checks shared by the bench scripts.
import type { Command } from 'commander';

/**
 * A checker for `program`'s integer options: int(name, value, min) returns the number, or
 * stops through commander's error with the script, the flag, the bound and the value named.
 */
export function intOption(program: Command): (name: string, value: string, min: number) => number {
  return (name, value, min) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) program.error(`${program.name()}: --${name} must be an integer >= ${min}, got '${value}'`);
    return n;
  };
}
