// The worker_threads side of test/js-threads.test.ts: a second JavaScript environment that
// imports kshare (so it installs its own warning handler), resolves every operator kshare knows
// `rounds` times while the main thread calls operators, raises one libtorch warning, and reports
// what it saw.
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import * as t from '../../src/tensor/index.js';
import { native, type Handle } from '../../src/tensor/native.js';
import { KERNELS } from '../../src/tensor/kernels.js';

/** Raises libtorch's (repeatable) warning about an `out` tensor of the wrong shape being resized. */
export function raiseResizeWarning(): void {
  t.tidy(() => {
    const a = t.ones([4]);
    const out = t.ones([2]);
    native.dispose(native.call(native.opId('aten::add', 'out'), [a.handle, a.handle, 1, out.handle]) as Handle); // a second handle on `out`
  });
}

export interface WorkerReport {
  ids: Record<string, number>;
  changedIds: string[];
  warnings: number;
}

if (!isMainThread && parentPort) {
  const { rounds } = workerData as { rounds: number };
  const ids: Record<string, number> = {};
  const changedIds: string[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const spec of Object.values(KERNELS)) {
      const [op, overload = ''] = spec.split('.');
      let id: number;
      try {
        id = native.opId(op!, overload);
      } catch {
        continue; // kshare's own operators are missing from a build without oneDNN
      }
      if (ids[spec] !== undefined && ids[spec] !== id) changedIds.push(spec);
      ids[spec] = id;
    }
  }
  const { warnings } = t.collectWarnings(raiseResizeWarning);
  parentPort.postMessage({ ids, changedIds, warnings: warnings.length } satisfies WorkerReport);
}
