// Gradient-norm clipping against torch.nn.utils.clip_grad_norm_: gradients of very different
// norms with maxNorm between them (so clipping each tensor by its own norm gives other
// numbers than clipping by the global norm), and a maxNorm above the total (nothing changes).
// Then the same through a loss scaler, where the gradients must be unscaled before clipping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { SGD, GradScaler, clipGradNorm, scaledStep } from '../src/train/optim/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';

const TOL = 1e-6;
// Norms about 2e-3, 3, 200 and 0.08: the total (about 200) is set by one tensor.
const SHAPES = [[3, 4], [4], [2, 3, 3, 3], [5]];
const SCALES = [1e-3, 1, 30, 0.05];
// Between the individual norms, then above the total.
const MAX_NORMS = [5, 1000];
const LR = 0.5;
const LOSS_SCALE = 1024; // a power of two, so scaling and unscaling are exact

const enc = (x: Tensor): Encoded => encode(x.toFloat32Array(), x.shape);

/** The gradients, a parameter without one (ignored by clipping), and torch's results. */
function fixtures() {
  const gen = new t.Generator(31);
  const grads = SHAPES.map((s, i) => t.randn(s, { generator: gen }).mul(SCALES[i]!));
  const init = SHAPES.map((s) => t.randn(s, { generator: gen }));
  const ref = runPython<{ total: number; grads: Encoded[]; params: Encoded[] }[]>(
    `
out = []
for max_norm in inp['maxNorms']:
    params = [dec(p).requires_grad_(True) for p in inp['init']]
    for p, g in zip(params, inp['grads']):
        p.grad = dec(g)
    unused = torch.zeros(3, requires_grad=True)
    total = torch.nn.utils.clip_grad_norm_(params + [unused], max_norm)
    torch.optim.SGD(params, lr=inp['lr']).step()
    out.append({'total': float(total), 'grads': [enc(p.grad) for p in params], 'params': [enc(p) for p in params]})
print(json.dumps(out))
`,
    { maxNorms: MAX_NORMS, init: init.map(enc), grads: grads.map(enc), lr: LR },
  );
  return { grads, init, ref };
}

test('clipGradNorm matches torch.nn.utils.clip_grad_norm_: total norm, every clipped gradient, unchanged below maxNorm', () => {
  t.tidy(() => {
    const { grads, init, ref } = fixtures();
    const norms = grads.map((g) => t.norm(g).item());
    MAX_NORMS.forEach((maxNorm, k) => {
      const params = init.map((p) => t.clone(p).requiresGrad_());
      params.forEach((p, i) => {
        p.grad = t.clone(grads[i]!);
      });
      const unused = t.zeros([3], { requiresGrad: true });
      const total = clipGradNorm([...params, unused], maxNorm).item();
      const want = ref[k]!;
      assert.ok(Math.abs(total - want.total) <= TOL * want.total, `maxNorm ${maxNorm}: total norm ${total}, torch ${want.total}`);
      params.forEach((p, i) => {
        const err = maxRelError(p.grad!.toFloat32Array(), decodeF32(want.grads[i]!));
        assert.ok(err < TOL, `maxNorm ${maxNorm}: gradient ${i} (norm ${norms[i]!.toPrecision(3)}) differs from torch by ${err.toExponential(2)}`);
      });
      assert.equal(unused.grad, null, 'a parameter without a gradient keeps none');
      if (k === 0) {
        // Meaningful only if some tensors alone are within maxNorm and some are not.
        assert.ok(norms.some((n) => n < maxNorm) && norms.some((n) => n > maxNorm), `norms ${norms} around ${maxNorm}`);
      } else {
        assert.ok(total < maxNorm);
        params.forEach((p, i) => assert.deepEqual(p.grad!.toArray(), grads[i]!.toArray(), `gradient ${i} changed though the total is below maxNorm`));
      }
    });
  });
});

test("scaledStep (the trainer's step) unscales before clipping: the step torch takes with the true gradients clipped", () => {
  t.tidy(() => {
    const { grads, init, ref } = fixtures();
    MAX_NORMS.forEach((maxNorm, k) => {
      const params = init.map((p) => t.clone(p).requiresGrad_());
      const opt = new SGD(params, { lr: LR });
      const scaler = new GradScaler({ initScale: LOSS_SCALE });
      // d/dp sum(p * g) = g, so the backward pass gives exactly LOSS_SCALE * g.
      const loss = params.map((p, i) => t.sum(t.mul(p, grads[i]!))).reduce((a, b) => t.add(a, b));
      scaler.scale(loss).backward();
      assert.deepEqual(
        params[1]!.grad!.toArray(),
        grads[1]!.toArray().map((v) => v * LOSS_SCALE),
        'the backward pass saw the scaled loss',
      );
      assert.equal(scaledStep(scaler, opt, params, maxNorm), true);
      const want = ref[k]!;
      params.forEach((p, i) => {
        const gradErr = maxRelError(p.grad!.toFloat32Array(), decodeF32(want.grads[i]!));
        assert.ok(gradErr < TOL, `maxNorm ${maxNorm}: gradient ${i} after unscale and clip differs from torch by ${gradErr.toExponential(2)}`);
        const err = maxRelError(p.toFloat32Array(), decodeF32(want.params[i]!));
        assert.ok(err < TOL, `maxNorm ${maxNorm}: parameter ${i} after the step differs from torch by ${err.toExponential(2)}`);
      });
      assert.equal(scaler.getScale(), LOSS_SCALE, 'one clean step does not change the scale');
      opt.dispose();
      scaler.dispose();
    });
  });
});
