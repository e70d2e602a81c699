// Shared by the convolution kernel tests (depthwise-conv, pointwise-conv): run a convolution
// with gradients of sum(y * r) and compare every output, failing on NaN (outputs are poisoned
// with NaN before the kernels write them, so an element left unwritten shows).
import assert from 'node:assert/strict';
import * as t from '../../src/tensor/index.js';
import type { Tensor } from '../../src/tensor/index.js';
import { maxRelError } from './python.js';

/** Input, weight, optional bias, and the tensor r whose product with the output is summed. */
export interface ConvData {
  x: Tensor;
  w: Tensor;
  b: Tensor | null;
  r: Tensor;
}

export interface ConvResult {
  y: Float32Array;
  gx: Float32Array;
  gw: Float32Array;
  gb: Float32Array | null;
  /** The output came back channels-last (and not also contiguous). */
  yChannelsLast: boolean;
}

/** y = conv(x, w, b), then the gradients of sum(y * r) for x, w and b. */
export function convGradients(data: ConvData, conv: (x: Tensor, w: Tensor, b: Tensor | null) => Tensor): ConvResult {
  return t.tidy(() => {
    const x = data.x.detach(),
      w = data.w.detach(),
      b = data.b?.detach() ?? null;
    for (const v of [x, w, b]) if (v) v.requiresGrad = true;
    const y = conv(x, w, b);
    t.sum(t.mul(y, data.r)).backward();
    const out = {
      y: y.toFloat32Array(),
      gx: x.grad!.toFloat32Array(),
      gw: w.grad!.toFloat32Array(),
      gb: b ? b.grad!.toFloat32Array() : null,
      yChannelsLast: t.isContiguous(y, 'channels_last') && !t.isContiguous(y),
    };
    for (const v of [x, w, b]) v?.grad?.dispose();
    return out;
  });
}

/** No NaN (an element left unwritten), and the largest relative error at most `tol`. */
export function assertClose(what: string, got: Float32Array, want: Float32Array, tol: number): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) if (Number.isNaN(got[i]!)) assert.fail(`${what}: element ${i} is NaN (left unwritten?)`);
  const e = maxRelError(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** Forward, grad input, grad weight and (where the reference has one) grad bias. */
export function compareConv(
  name: string,
  got: Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>,
  want: Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>,
  tol: number,
): void {
  assertClose(`${name} forward`, got.y, want.y, tol);
  assertClose(`${name} grad input`, got.gx, want.gx, tol);
  assertClose(`${name} grad weight`, got.gw, want.gw, tol);
  if (want.gb) assertClose(`${name} grad bias`, got.gb!, want.gb, tol);
}
