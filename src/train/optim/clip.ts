// Gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ (no host synchronisation).
import { Tensor, noGrad, tidy, stack, norm, clamp, keep } from '../../tensor/index.js';
import { foreach } from './foreach.js';

/**
 * Scales all gradients so that their joint L2 norm is at most maxNorm. Returns the norm
 * before clipping as a scalar tensor (read it only when you need it: reading syncs).
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  return noGrad(() =>
    tidy(() => {
      const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== null);
      if (!grads.length) return keep(norm(stack([])));
      const total = norm(stack(foreach.norm(grads)));
      const coef = clamp(total.add(1e-6).pow(-1).mul(maxNorm), null, 1);
      foreach.mulList_(
        grads,
        grads.map(() => coef),
      );
      return total;
    }),
  );
}
