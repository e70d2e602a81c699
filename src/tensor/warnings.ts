// libtorch's warnings (TORCH_WARN) arrive here and nowhere else: the addon collects them and
// hands them over after the call that raised them. By default each distinct warning is printed
// once to stderr, shortened; code that expects one (a test of an edge case) collects it instead.
import { native } from './native.js';

export type WarningHandler = (message: string) => void;

const printed = new Set<string>();
const printOnce: WarningHandler = (message) => {
  if (printed.has(message)) return;
  printed.add(message);
  process.stderr.write(`kshare: libtorch warning: ${message}\n`);
};
let current: WarningHandler = printOnce;

native.setWarningHandler((message: string) => current(message));

/** Routes libtorch warnings to `handler` (null: the default, print each distinct one once); returns the previous handler. */
export function setWarningHandler(handler: WarningHandler | null): WarningHandler {
  const previous = current;
  current = handler ?? printOnce;
  return previous;
}

/** Runs fn and returns what it returned with the libtorch warnings it raised, which are not printed. */
export function collectWarnings<T>(fn: () => T): { result: T; warnings: string[] } {
  const warnings: string[] = [];
  const previous = setWarningHandler((m) => warnings.push(m));
  try {
    return { result: fn(), warnings };
  } finally {
    setWarningHandler(previous);
  }
}
