// PIL's Image.transform(AFFINE) for a batch, on grid_sample. PIL maps each output pixel centre
// u = (x + ½, y + ½) to the input point A·u + c (pixel-corner coordinates) and paints `fill`
// where that point falls outside [0, W) x [0, H). Inside, PIL's bicubic uses a = −1 and
// libtorch's a = −0.75 (the only deviation); edge neighbours are clamped in both.
import * as t from '../../tensor/index.js';
import type { Tensor } from '../../tensor/index.js';

/** PIL affine data (a, b, c, d, e, f): input = (a·x + b·y + c, d·x + e·y + f). */
export type PilAffine = [number, number, number, number, number, number];

export function shearX(f: number): PilAffine {
  return [1, f, 0, 0, 1, 0];
}
export function shearY(f: number): PilAffine {
  return [1, 0, 0, f, 1, 0];
}
export function translate(dx: number, dy: number): PilAffine {
  return [1, 0, dx, 0, 1, dy];
}

/** Image.rotate(degrees) about the image centre (counter-clockwise for positive degrees). */
export function rotate(degrees: number, w: number, h: number): PilAffine {
  const a = (-degrees * Math.PI) / 180;
  const cos = Math.cos(a),
    sin = Math.sin(a);
  const cx = w / 2,
    cy = h / 2;
  return [cos, sin, -cos * cx - sin * cy + cx, -sin, cos, sin * cx - cos * cy + cy];
}

/**
 * The same map in grid_sample's normalised coordinates (align_corners false: g = 2u/S − 1):
 * theta = D⁻¹AD, offset = D⁻¹AD·1 + 2D⁻¹c − 1 with D = diag(W, H).
 */
export function toTheta(m: PilAffine, w: number, h: number): number[] {
  const [a, b, c, d, e, f] = m;
  const t00 = a,
    t01 = (b * h) / w,
    t10 = (d * w) / h,
    t11 = e;
  return [t00, t01, t00 + t01 + (2 * c) / w - 1, t10, t11, t10 + t11 + (2 * f) / h - 1];
}

/**
 * Warps x (n, C, H, W; float pixel values 0..255) by one PIL affine map per image, with
 * bicubic sampling, rounding and clipping to [0, 255], and per-channel `fill` outside.
 */
export function warpAffine(x: Tensor, maps: PilAffine[], fill: number[]): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  if (maps.length !== n) throw new Error(`warpAffine: ${maps.length} maps for ${n} images`);
  if (fill.length !== c) throw new Error(`warpAffine: fill has ${fill.length} values for ${c} channels`);
  const theta = new Float32Array(n * 6);
  maps.forEach((m, i) => theta.set(toTheta(m, w, h), i * 6));
  return t.tidy(() => {
    const grid = t.affineGrid(t.tensor(theta, [n, 2, 3], { device: x.device }), [n, c, h, w], false);
    const gx = t.select(grid, 3, 0);
    const gy = t.select(grid, 3, 1);
    const inside = t.unsqueeze(t.logicalAnd(t.logicalAnd(t.ge(gx, -1), t.lt(gx, 1)), t.logicalAnd(t.ge(gy, -1), t.lt(gy, 1))), 1);
    const sampled = t.gridSample(x, grid, { mode: 'bicubic', paddingMode: 'border', alignCorners: false });
    const px = t.round(t.clamp(sampled, 0, 255));
    const fillT = t.tensor(Float32Array.from(fill), [1, c, 1, 1], { device: x.device });
    return t.where(inside, px, t.expand(fillT, [n, c, h, w]));
  });
}
