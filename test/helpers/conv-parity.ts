// Shared by the convolution kernel tests (depthwise-conv, pointwise-conv): run a convolution
// with gradients of sum(y * r) and compare every output, failing on NaN (outputs are poisoned
// with NaN before the kernels write them, so an element left unwritten shows).
import assert from 'node:assert/strict';
import * as t from '../../src/tensor/index.js';
import type { Tensor } from '../../src/tensor/index.js';
import { maxRelError, runPython, encode, decodeF32, type Encoded } from './python.js';

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

/** How a case is convolved: conv2d's options, applied twice (same weights) when `twice`. */
export interface ConvCall {
  padding: [number, number];
  dilation: [number, number];
  groups: number;
  twice?: boolean;
}

/** y = conv(x), or conv(conv(x)) for a kernel used by two layers, with kshare's conv2d. */
export function conv2dCall(call: ConvCall): (x: Tensor, w: Tensor, b: Tensor | null) => Tensor {
  const o = { padding: call.padding, dilation: call.dilation, groups: call.groups };
  return (x, w, b) => {
    const y = t.conv2d(x, w, b, o);
    return call.twice ? t.conv2d(y, w, b, o) : y;
  };
}

const TORCH_CONV = `
import torch.nn.functional as F
res = []
for c in inp['cases']:
    x, w, r = dec(c['x']), dec(c['w']), dec(c['r'])
    b = dec(c['b']) if 'b' in c else None
    if c['cl']:
        x, r = x.contiguous(memory_format=torch.channels_last), r.contiguous(memory_format=torch.channels_last)
    for v in (x, w, b):
        if v is not None: v.requires_grad_(True)
    conv = lambda v: F.conv2d(v, w, b, padding=c['padding'], dilation=c['dilation'], groups=c['groups'])
    y = conv(x)
    if c['twice']:
        y = conv(y)
    (y * r).sum().backward()
    res.append({'y': enc(y), 'gx': enc(x.grad), 'gw': enc(w.grad), 'gb': enc(b.grad) if b is not None else None})
print(json.dumps(res))
`;

/** The same gradients from python3-torch's F.conv2d, one result per case, in one Python run. */
export function torchConvGradients(cases: { data: ConvData; channelsLast: boolean; call: ConvCall }[]): Pick<ConvResult, 'y' | 'gx' | 'gw' | 'gb'>[] {
  const enc = (v: Tensor): Encoded => encode(v.toFloat32Array(), v.shape);
  const payload = cases.map(({ data, channelsLast, call }) => ({
    x: enc(data.x),
    w: enc(data.w),
    r: enc(data.r),
    ...(data.b ? { b: enc(data.b) } : {}),
    cl: channelsLast,
    padding: call.padding,
    dilation: call.dilation,
    groups: call.groups,
    twice: !!call.twice,
  }));
  const out = runPython<{ y: Encoded; gx: Encoded; gw: Encoded; gb: Encoded | null }[]>(TORCH_CONV, { cases: payload });
  return out.map((r) => ({ y: decodeF32(r.y), gx: decodeF32(r.gx), gw: decodeF32(r.gw), gb: r.gb ? decodeF32(r.gb) : null }));
}
