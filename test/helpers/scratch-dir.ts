// A scratch folder for one test file, removed when the test process exits (also after a
// failure), so test files need no clean-up code of their own.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/** A fresh folder `kshare-<name>-XXXXXX` under the system temp folder. */
export function scratchDir(name: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `kshare-${name}-`));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
