// PIL's colour operations (ImageOps / ImageEnhance, as timm's RandAugment calls them), batched.
// Input and output: float (n, C, H, W) holding integer values in [0, 255], i.e. PIL's uint8
// pixels; per-image arguments are (n, 1, 1, 1) tensors. Rounding follows PIL: blends
// truncate, greyscale uses PIL's fixed-point weights, LUT results are clipped to [0, 255].
import * as t from '../../tensor/index.js';
import type { Tensor } from '../../tensor/index.js';

/** ImageOps.autocontrast (cutoff 0): per channel, stretch [min, max] to [0, 255]; flat channels unchanged. */
export function autoContrast(x: Tensor): Tensor {
  return t.tidy(() => {
    const lo = t.amin(x, [2, 3], true);
    const hi = t.amax(x, [2, 3], true);
    const range = hi.sub(lo);
    const flat = t.le(range, 0);
    const stretched = t.clamp(
      t.floor(
        x
          .sub(lo)
          .mul(255)
          .div(t.where(flat, t.onesLike(range), range)),
      ),
      0,
      255,
    );
    return t.where(flat, x, stretched);
  });
}

/**
 * ImageOps.equalize, exactly: per channel, a 256-bin histogram (scatter-add), then PIL's LUT
 * lut[v] = (step // 2 + #pixels below v) // step with step = (#pixels − #pixels at the top
 * value) // 255; identity where step is 0.
 */
export function equalize(x: Tensor): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  return t.tidy(() => {
    const v = t.reshape(x, [n * c, h * w]).to('int64');
    const hist = t.scatterAdd(t.zeros([n * c, 256], { device: x.device }), 1, v, t.ones([n * c, h * w], { device: x.device }));
    const below = t.cumsum(hist, 1).sub(hist);
    const top = t.gather(hist, 1, t.amax(v, 1, true));
    const step = t.floor(t.sub(t.full([n * c, 1], h * w, { device: x.device }), top).div(255));
    const none = t.le(step, 0);
    const safeStep = t.where(none, t.onesLike(step), step);
    const lut = t.clamp(t.floor(t.floor(safeStep.div(2)).add(below).div(safeStep)), 0, 255);
    const mapped = t.gather(lut, 1, v);
    const out = t.where(none, t.reshape(x, [n * c, h * w]), mapped);
    return t.reshape(out, [n, c, h, w]);
  });
}

export function invert(x: Tensor): Tensor {
  return t.tidy(() => t.neg(x).add(255));
}

/** ImageOps.posterize: keep the top bits, i.e. round down to a multiple of quantum = 2^(8 − bits) (256 gives black). */
export function posterize(x: Tensor, quantum: Tensor): Tensor {
  return t.tidy(() => t.floor(x.div(quantum)).mul(quantum));
}

/** ImageOps.solarize: invert the pixels at or above the threshold. */
export function solarize(x: Tensor, threshold: Tensor): Tensor {
  return t.tidy(() => t.where(t.lt(x, threshold), x, t.neg(x).add(255)));
}

/** timm's solarize_add: add `add` (clipped at 255) to pixels below 128. */
export function solarizeAdd(x: Tensor, add: Tensor): Tensor {
  return t.tidy(() => t.where(t.lt(x, 128), t.clamp(x.add(add), null, 255), x));
}

/** Image.blend(degenerate, x, factor) on uint8 pixels: truncated and clipped. */
export function blend(degenerate: Tensor, x: Tensor, factor: Tensor): Tensor {
  return t.tidy(() => t.floor(t.clamp(degenerate.add(x.sub(degenerate).mul(factor)), 0, 255)));
}

/** PIL's RGB -> L conversion: (19595 R + 38470 G + 7471 B + 2^15) >> 16; (n, 1, H, W). */
export function luminance(x: Tensor): Tensor {
  if (x.dim(1) === 1) return x.clone();
  if (x.dim(1) !== 3) throw new Error(`luminance: expected 1 or 3 channels, got ${x.dim(1)}`);
  return t.tidy(() => {
    const [r, g, b] = [0, 1, 2].map((i) => t.slice(x, 1, i, i + 1));
    return t.floor(r!.mul(19595).add(g!.mul(38470)).add(b!.mul(7471)).add(32768).div(65536));
  });
}

/** ImageEnhance.Color: blend with the greyscale image. */
export function color(x: Tensor, factor: Tensor): Tensor {
  return t.tidy(() => blend(luminance(x), x, factor));
}

/** ImageEnhance.Contrast: blend with the image's mean grey level, int(mean(L) + 0.5). */
export function contrast(x: Tensor, factor: Tensor): Tensor {
  return t.tidy(() => blend(t.floor(t.mean(luminance(x), [1, 2, 3], true).add(0.5)), x, factor));
}

/** ImageEnhance.Brightness: blend with black. */
export function brightness(x: Tensor, factor: Tensor): Tensor {
  return t.tidy(() => t.floor(t.clamp(x.mul(factor), 0, 255)));
}

/**
 * ImageEnhance.Sharpness: blend with ImageFilter.SMOOTH ([[1,1,1],[1,5,1],[1,1,1]] / 13,
 * rounded), whose border pixels PIL leaves unfiltered.
 */
export function sharpness(x: Tensor, factor: Tensor): Tensor {
  const [, c, h, w] = x.shape as [number, number, number, number];
  if (h < 3 || w < 3) return x.clone();
  return t.tidy(() => {
    const k = t.tensor(
      Float32Array.from([1, 1, 1, 1, 5, 1, 1, 1, 1], (v) => v / 13),
      [1, 1, 3, 3],
      { device: x.device },
    );
    const smooth = t.floor(t.conv2d(x, t.expand(k, [c, 1, 3, 3]), null, { groups: c }).add(0.5));
    const padded = t.pad(smooth, [1, 1, 1, 1]);
    const inside = new Uint8Array(h * w);
    for (let i = 1; i < h - 1; i++) inside.fill(1, i * w + 1, i * w + w - 1);
    const interior = t.tensor(inside, [1, 1, h, w], { dtype: 'bool', device: x.device });
    return blend(t.where(interior, padded, x), x, factor);
  });
}
