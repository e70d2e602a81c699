// Image files → the float input a model expects: decode (src/data's PNG/JPEG decoder),
// centre-crop to the model's aspect ratio, area-resample to its size, normalise per channel.
import { decodeImage, type DecodedImage } from '../data/decode.js';
import type { InputSpec } from './model-info.js';

/**
 * Area resampling of the centred crop that has the target's aspect ratio: every output pixel
 * is the mean of the source area it covers (partial pixels weighted), so shrinking a photo
 * does not alias and a same-size image passes through unchanged.
 */
export function resizeToFit(img: DecodedImage, width: number, height: number): DecodedImage {
  if (img.width === width && img.height === height) return img;
  const scale = Math.min(img.width / width, img.height / height);
  const x0 = (img.width - width * scale) / 2,
    y0 = (img.height - height * scale) / 2;
  const inPlane = img.width * img.height,
    outPlane = width * height;
  const out = new Uint8Array(3 * outPlane);
  const acc = new Float64Array(3);
  for (let oy = 0; oy < height; oy++) {
    const sy0 = y0 + oy * scale,
      sy1 = sy0 + scale;
    for (let ox = 0; ox < width; ox++) {
      const sx0 = x0 + ox * scale,
        sx1 = sx0 + scale;
      acc.fill(0);
      let wsum = 0;
      for (let y = Math.floor(sy0); y < Math.min(Math.ceil(sy1), img.height); y++) {
        const wy = Math.min(y + 1, sy1) - Math.max(y, sy0);
        for (let x = Math.floor(sx0); x < Math.min(Math.ceil(sx1), img.width); x++) {
          const w = wy * (Math.min(x + 1, sx1) - Math.max(x, sx0));
          const i = y * img.width + x;
          for (let c = 0; c < 3; c++) acc[c]! += w * img.chw[c * inPlane + i]!;
          wsum += w;
        }
      }
      for (let c = 0; c < 3; c++) out[c * outPlane + oy * width + ox] = Math.round(acc[c]! / wsum);
    }
  }
  return { width, height, chw: out };
}

/** CHW RGB bytes → float32 CHW, (v/255 − mean) / std per channel. */
export function normalise(img: DecodedImage, spec: InputSpec): Float32Array {
  if (spec.channels !== 3) throw new Error(`models with ${spec.channels} input channels are not supported (images give RGB)`);
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) {
    const m = spec.mean[c]!,
      s = spec.std[c]!;
    for (let p = 0; p < n; p++) out[c * n + p] = (img.chw[c * n + p]! / 255 - m) / s;
  }
  return out;
}

export interface PreparedImage {
  input: Float32Array;
  /** The image's own size when it was not the model's (it was then cropped and resampled). */
  resizedFrom?: { width: number; height: number };
}

/**
 * File bytes → model input. A file that is not a PNG/JPEG, or a broken one, gives an error
 * naming `label`; a wrong-sized image is centre-cropped and resampled, and says so.
 */
export function prepareImage(bytes: Uint8Array, spec: InputSpec, label: string): PreparedImage {
  const img = decodeImage(bytes, label);
  const fitted = resizeToFit(img, spec.width, spec.height);
  const prepared: PreparedImage = { input: normalise(fitted, spec) };
  if (fitted !== img) prepared.resizedFrom = { width: img.width, height: img.height };
  return prepared;
}
