// Worker thread for the image-folder reader: reads and decodes a batch of files, answers with
// their sizes and the concatenated CHW pixels (transferred, not copied).

import { readFileSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { decodeToTarget, type ResizeSpec } from './decode.js';
import { DataError } from './types.js';

export interface DecodeRequest {
  id: number;
  files: string[];
  /** Names used in error messages (relative paths), parallel to files. */
  names: string[];
  resize?: ResizeSpec;
}

export type DecodeReply =
  | { id: number; ok: true; sizes: Int32Array; data: Uint8Array }
  | { id: number; ok: false; message: string; file?: string };

parentPort?.on('message', (req: DecodeRequest) => {
  try {
    const parts: Uint8Array[] = [];
    const sizes = new Int32Array(req.files.length * 2);
    let total = 0;
    for (let i = 0; i < req.files.length; i++) {
      const name = req.names[i]!;
      let buf: Buffer;
      try {
        buf = readFileSync(req.files[i]!);
      } catch (e) {
        throw new DataError(`${name}: cannot read (${(e as Error).message})`, { file: req.files[i]! });
      }
      const img = decodeToTarget(buf, name, req.resize);
      sizes[2 * i] = img.width;
      sizes[2 * i + 1] = img.height;
      parts.push(img.chw);
      total += img.chw.length;
    }
    const data = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      data.set(p, o);
      o += p.length;
    }
    const reply: DecodeReply = { id: req.id, ok: true, sizes, data };
    parentPort!.postMessage(reply, [data.buffer, sizes.buffer]);
  } catch (e) {
    const reply: DecodeReply = { id: req.id, ok: false, message: (e as Error).message, ...(e instanceof DataError && e.file ? { file: e.file } : {}) };
    parentPort!.postMessage(reply);
  }
});
