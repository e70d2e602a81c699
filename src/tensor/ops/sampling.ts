// Resampling images at arbitrary points: affine grids and grid sampling (as F.affine_grid /
// F.grid_sample). Coordinates are normalised to [-1, 1] across the image.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, rankArg, floatArg, sameDevice, ShapeError, describe } from '../validate.js';

/** Sampling grid (N, H, W, 2) for affine matrices theta (N, 2, 3) and an output size [N, C, H, W]. */
export function affineGrid(theta: Tensor, size: [number, number, number, number], alignCorners = false): Tensor {
  tensorArg('affineGrid', 'theta', theta);
  floatArg('affineGrid', 'theta', theta);
  if (theta.rank !== 3 || theta.dim(1) !== 2 || theta.dim(2) !== 3) throw new ShapeError(`affineGrid: theta must have shape [N, 2, 3], got [${theta.shape}]`);
  if (!Array.isArray(size) || size.length !== 4 || size.some((d) => !Number.isInteger(d) || d < 1))
    throw new ShapeError(`affineGrid: size must be [N, C, H, W] of positive integers, got ${describe(size)}`);
  if (size[0] !== theta.dim(0)) throw new ShapeError(`affineGrid: size has batch ${size[0]} but theta has ${theta.dim(0)} matrices`);
  return wrap(runKernel('affineGrid', 'affineGrid', [theta.handle, size, alignCorners]));
}

export type GridMode = 'bilinear' | 'nearest' | 'bicubic';
export type GridPadding = 'zeros' | 'border' | 'reflection';
const MODES: Record<GridMode, number> = { bilinear: 0, nearest: 1, bicubic: 2 };
const PADDINGS: Record<GridPadding, number> = { zeros: 0, border: 1, reflection: 2 };

export interface GridSampleOptions {
  mode?: GridMode;
  paddingMode?: GridPadding;
  alignCorners?: boolean;
}

/** Samples x (N, C, H, W) at grid (N, Ho, Wo, 2) points, giving (N, C, Ho, Wo). */
export function gridSample(x: Tensor, grid: Tensor, o: GridSampleOptions = {}): Tensor {
  tensorArg('gridSample', 'input', x);
  tensorArg('gridSample', 'grid', grid);
  rankArg('gridSample', 'input', x, 4);
  floatArg('gridSample', 'input', x);
  if (grid.rank !== 4 || grid.dim(3) !== 2 || grid.dim(0) !== x.dim(0))
    throw new ShapeError(`gridSample: grid must have shape [${x.dim(0)}, H, W, 2], got [${grid.shape}]`);
  if (grid.dtype !== x.dtype) throw new TypeError(`gridSample: grid is ${grid.dtype} but input is ${x.dtype}`);
  sameDevice('gridSample', ['input', x], ['grid', grid]);
  const mode = o.mode ?? 'bilinear';
  const pad = o.paddingMode ?? 'zeros';
  if (!(mode in MODES)) throw new TypeError(`gridSample: mode must be bilinear, nearest or bicubic, got ${describe(mode)}`);
  if (!(pad in PADDINGS)) throw new TypeError(`gridSample: paddingMode must be zeros, border or reflection, got ${describe(pad)}`);
  return wrap(runKernel('gridSample', 'gridSampler2d', [x.handle, grid.handle, MODES[mode], PADDINGS[pad], o.alignCorners ?? false]));
}
