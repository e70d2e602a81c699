// Loading a dataset's train and test splits for a run, with a progress bar for the slow part
// (decoding an image folder the first time) and one-line notes about where data came from.
import cliProgress from 'cli-progress';
import { loadDataset, type ImageDataset, type Split } from '../data/index.js';

export interface LoadSplitsOptions {
  dataDir?: string;
  download?: boolean;
  log?: (line: string) => void;
  progress?: boolean;
  /** Use a dataset archive whose checksum differs from the published one. */
  allowChecksumMismatch?: boolean;
}

export async function loadSplit(spec: string, split: Split, o: LoadSplitsOptions = {}): Promise<ImageDataset> {
  const log = o.log ?? ((l: string) => console.log(l));
  let bar: cliProgress.SingleBar | null = null;
  let stage = '';
  try {
    return await loadDataset(spec, {
      split, download: o.download ?? false, log, allowChecksumMismatch: !!o.allowChecksumMismatch,
      ...(o.dataDir ? { dataDir: o.dataDir } : {}),
      onProgress: (done, total, st) => {
        // Scanning folders and reading the decoded cache take a second or two: no bar for those.
        if (!o.progress || !total || st === 'scan' || st === 'cache') return;
        if (st !== stage || !bar) {
          bar?.stop();
          stage = st ?? '';
          bar = new cliProgress.SingleBar({ format: `${spec} ${split}: ${stage || 'loading'} |{bar}| {percentage}% | ETA {eta_formatted}`, clearOnComplete: true, hideCursor: true, fps: 5 }, cliProgress.Presets.shades_classic);
          bar.start(total, done);
        }
        bar.update(done);
      },
    });
  } finally {
    (bar as cliProgress.SingleBar | null)?.stop();
  }
}

export async function loadSplits(spec: string, o: LoadSplitsOptions = {}): Promise<{ train: ImageDataset; test: ImageDataset }> {
  const train = await loadSplit(spec, 'train', o);
  const test = await loadSplit(spec, 'test', o);
  if (train.classes.join('\n') !== test.classes.join('\n')) throw new Error(`${spec}: the train and test splits list different classes`);
  // A one-class "classifier" reaches 100% without learning anything.
  if (train.classes.length < 2) throw new Error(`${spec}: a classifier needs at least two classes, the training split has ${train.classes.length} ('${train.classes.join("', '")}'); add a folder per class`);
  return { train, test };
}
