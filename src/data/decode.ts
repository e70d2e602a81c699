// Image decoding for the image-folder reader: PNG (pngjs) and JPEG (jpeg-js) to CHW uint8 RGB,
// plus nearest/bilinear resizing. Pure JS, usable from worker threads.

import jpeg from 'jpeg-js';
import pngjs from 'pngjs';
import { DataError } from './types.js';
import { checkImageFile, maxImagePixels } from './image-header.js';

export type ResizeMode = 'nearest' | 'bilinear';

export interface ResizeSpec {
  height: number;
  width: number;
  /** Default 'bilinear' (half-pixel centres, no antialiasing). */
  mode?: ResizeMode;
}

export interface DecodedImage {
  width: number;
  height: number;
  /** 3 x height x width, uint8, CHW. */
  chw: Uint8Array;
}

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg'];

export function imageKind(buf: Uint8Array): 'png' | 'jpeg' | null {
  if (buf.length >= 8 && buf[0] === 0x89 && buf[1] === 0x50 && buf[2] === 0x4e && buf[3] === 0x47) return 'png';
  if (buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) return 'jpeg';
  return null;
}

/** Decodes a PNG or JPEG (sniffed from its bytes) into CHW RGB; alpha is dropped, grey replicated. */
export function decodeImage(buf: Uint8Array, file: string): DecodedImage {
  const kind = imageKind(buf);
  if (kind === null) throw new DataError(`${file}: not a PNG or JPEG image (cannot decode ${buf.length} bytes)`, { file });
  let width: number;
  let height: number;
  let data: Uint8Array;
  let stride: number;
  // Header size limit and PNG completeness first: the decoders allocate what the header claims.
  checkImageFile(buf, kind, file);
  try {
    if (kind === 'png') {
      const png = pngjs.PNG.sync.read(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
      // pngjs always returns 8-bit RGBA (grey, palette and 16-bit are converted).
      width = png.width;
      height = png.height;
      data = png.data;
      stride = 4;
    } else {
      const img = jpeg.decode(buf, { useTArray: true, formatAsRGBA: false, maxMemoryUsageInMB: 1024, maxResolutionInMP: maxImagePixels() / 1e6 });
      width = img.width;
      height = img.height;
      data = img.data;
      stride = 3;
    }
  } catch (e) {
    throw new DataError(`${file}: cannot decode ${kind === 'png' ? 'PNG' : 'JPEG'} (${(e as Error).message})`, { file, cause: e });
  }
  const plane = width * height;
  if (!(width > 0 && height > 0) || data.length < plane * stride)
    throw new DataError(`${file}: cannot decode ${kind === 'png' ? 'PNG' : 'JPEG'} (got ${data.length} bytes for ${width}x${height})`, { file });
  const chw = new Uint8Array(3 * plane);
  for (let i = 0, s = 0; i < plane; i++, s += stride) {
    chw[i] = data[s]!;
    chw[plane + i] = data[s + 1]!;
    chw[2 * plane + i] = data[s + 2]!;
  }
  return { width, height, chw };
}

/** Resizes a CHW image (any channel count). */
export function resizeCHW(src: Uint8Array, c: number, h: number, w: number, oh: number, ow: number, mode: ResizeMode = 'bilinear'): Uint8Array {
  const out = new Uint8Array(c * oh * ow);
  if (oh === h && ow === w) {
    out.set(src.subarray(0, c * h * w));
    return out;
  }
  const sy = h / oh;
  const sx = w / ow;
  if (mode === 'nearest') {
    const xs = new Int32Array(ow);
    for (let x = 0; x < ow; x++) xs[x] = Math.min(w - 1, Math.floor(x * sx));
    for (let ch = 0; ch < c; ch++)
      for (let y = 0; y < oh; y++) {
        const yy = Math.min(h - 1, Math.floor(y * sy));
        const si = ch * h * w + yy * w;
        const di = ch * oh * ow + y * ow;
        for (let x = 0; x < ow; x++) out[di + x] = src[si + xs[x]!]!;
      }
    return out;
  }
  // Bilinear with half-pixel centres (align_corners = false).
  const x0 = new Int32Array(ow);
  const x1 = new Int32Array(ow);
  const fx = new Float32Array(ow);
  for (let x = 0; x < ow; x++) {
    const p = Math.max(0, (x + 0.5) * sx - 0.5);
    const i = Math.min(w - 1, Math.floor(p));
    x0[x] = i;
    x1[x] = Math.min(w - 1, i + 1);
    fx[x] = p - i;
  }
  for (let y = 0; y < oh; y++) {
    const p = Math.max(0, (y + 0.5) * sy - 0.5);
    const y0 = Math.min(h - 1, Math.floor(p));
    const y1 = Math.min(h - 1, y0 + 1);
    const fy = p - y0;
    for (let ch = 0; ch < c; ch++) {
      const base = ch * h * w;
      const r0 = base + y0 * w;
      const r1 = base + y1 * w;
      const di = ch * oh * ow + y * ow;
      for (let x = 0; x < ow; x++) {
        const a = src[r0 + x0[x]!]! + (src[r0 + x1[x]!]! - src[r0 + x0[x]!]!) * fx[x]!;
        const b = src[r1 + x0[x]!]! + (src[r1 + x1[x]!]! - src[r1 + x0[x]!]!) * fx[x]!;
        out[di + x] = Math.round(a + (b - a) * fy);
      }
    }
  }
  return out;
}

/** Decodes and (when `resize` is given and the size differs) resizes to the target. */
export function decodeToTarget(buf: Uint8Array, file: string, resize?: ResizeSpec): DecodedImage {
  const img = decodeImage(buf, file);
  if (!resize || (img.width === resize.width && img.height === resize.height)) return img;
  return { width: resize.width, height: resize.height, chw: resizeCHW(img.chw, 3, img.height, img.width, resize.height, resize.width, resize.mode ?? 'bilinear') };
}
