// One optimiser step after a loss-scaled backward pass, in the order PyTorch documents for
// gradient clipping with a GradScaler (unscale_, clip_grad_norm_, step, update).
import { Tensor, tidy } from '../../tensor/index.js';
import { clipGradNorm } from './clip.js';
import type { GradScaler } from './scaler.js';
import type { Optimizer } from './optimizer.js';

/**
 * Call after `scaler.scale(loss).backward()`. With `maxGradNorm`, the gradients are unscaled
 * first so that clipping sees their true norm (clipping scaled ones would clip by the scale
 * instead). Then steps unless a gradient overflowed, and updates the scale. Returns whether
 * the optimiser stepped. A disabled scaler makes this clip (if asked) and step.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any optimizer, whatever its options type
export function scaledStep(scaler: GradScaler, optimizer: Optimizer<any>, params: Tensor[], maxGradNorm: number | null): boolean {
  if (maxGradNorm !== null) {
    scaler.unscale(optimizer);
    tidy(() => void clipGradNorm(params, maxGradNorm));
  }
  const stepped = scaler.step(optimizer);
  scaler.update();
  return stepped;
}
