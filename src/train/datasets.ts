// Loading a dataset's train and test splits for a run, with a progress bar for the slow parts
// (extracting an archive, decoding an image folder the first time) on a terminal, plain
// progress lines elsewhere, and one-line notes about where data came from (each note once).
import cliProgress from 'cli-progress';
import { loadDataset, type ImageDataset, type Split } from '../data/index.js';

export interface LoadSplitsOptions {
  dataDir?: string;
  download?: boolean;
  log?: (line: string) => void;
  progress?: boolean;
  /** Without a terminal: a plain line about the slow parts at most every `seconds` (default 15). */
  progressLines?: boolean | { seconds: number };
  /** Use a dataset archive whose checksum differs from the published one. */
  allowChecksumMismatch?: boolean;
}

const STAGE_WORDS: Record<string, string> = { extract: 'extracting', decode: 'decoding images', download: 'downloading', read: 'reading' };

export async function loadSplit(spec: string, split: Split, o: LoadSplitsOptions = {}): Promise<ImageDataset> {
  const log = o.log ?? ((l: string) => console.log(l));
  let bar: cliProgress.SingleBar | null = null;
  let stage = '';
  const every = typeof o.progressLines === 'object' ? o.progressLines.seconds : 15;
  let lineAt = performance.now();
  try {
    return await loadDataset(spec, {
      split,
      download: o.download ?? false,
      log,
      allowChecksumMismatch: !!o.allowChecksumMismatch,
      ...(o.dataDir ? { dataDir: o.dataDir } : {}),
      onProgress: (done, total, st) => {
        // Scanning folders and reading the decoded cache take a second or two: no bar for those.
        if (!total || st === 'scan' || st === 'cache') return;
        if (!o.progress) {
          const now = performance.now();
          if (o.progressLines && done < total && now - lineAt >= every * 1000) {
            lineAt = now;
            log(
              `${spec} ${split}: ${STAGE_WORDS[st ?? ''] ?? st ?? 'loading'} ${Math.floor((100 * done) / total)}% (${done.toLocaleString('en-US')}/${total.toLocaleString('en-US')})`,
            );
          }
          return;
        }
        if (st !== stage || !bar) {
          bar?.stop();
          stage = st ?? '';
          bar = new cliProgress.SingleBar(
            { format: `${spec} ${split}: ${stage || 'loading'} |{bar}| {percentage}% | ETA {eta_formatted}`, clearOnComplete: true, hideCursor: true, fps: 5 },
            cliProgress.Presets.shades_classic,
          );
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
  // Both splits come from the same place: say where once.
  const said = new Set<string>();
  const log = o.log ?? ((l: string) => console.log(l));
  const once = {
    ...o,
    log: (l: string) => {
      if (!said.has(l)) {
        said.add(l);
        log(l);
      }
    },
  };
  const train = await loadSplit(spec, 'train', once);
  const test = await loadSplit(spec, 'test', once);
  if (train.classes.join('\n') !== test.classes.join('\n')) throw new Error(`${spec}: the train and test splits list different classes`);
  // A one-class "classifier" reaches 100% without learning anything.
  if (train.classes.length < 2)
    throw new Error(
      `${spec}: a classifier needs at least two classes, the training split has ${train.classes.length} ('${train.classes.join("', '")}'); add a folder per class`,
    );
  return { train, test };
}
