// Layer sequences that run as one fused kernel where it applies.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from './module.js';
import { Conv2d } from './conv.js';
import { GELU } from './activation.js';
import { BatchNorm2d } from './batchnorm.js';

/**
 * Conv2d (with bias) → exact GELU → BatchNorm2d, as ConvMixer uses it: the convolution without
 * its bias, then kshare's fused bias + GELU + BatchNorm kernel (native/fused_gelu_bn.cc), which
 * is several times faster than libtorch's three ops on the CPU. The parameters, buffers and
 * running-stat updates are exactly the layers' own. Returns null where the kernel does not apply
 * (not CPU float32, autocast, `KSHARE_NATIVE_KERNELS=0`, a layer configured differently), and
 * the caller then runs the layers one by one.
 */
export function convGeluBatchNorm(conv: Module, gelu: Module, bn: Module, x: Tensor): Tensor | null {
  if (!(conv instanceof Conv2d) || !(gelu instanceof GELU) || !(bn instanceof BatchNorm2d)) return null;
  // A layer whose forward was replaced on the instance (shape tracing in models/summary.ts,
  // a user's hook) must run as itself.
  if ([conv, gelu, bn].some((m) => Object.prototype.hasOwnProperty.call(m, 'forward'))) return null;
  const bias = conv.bias,
    weight = bn.weight,
    bnBias = bn.bias,
    rm = bn.runningMean,
    rv = bn.runningVar;
  if (gelu.approximate !== 'none' || !bias || !weight || !bnBias || !rm || !rv) return null;
  if (!t.cpuKernelsAllowed()) return null;
  if (x.rank !== 4 || x.device !== 'cpu' || x.dtype !== 'float32' || conv.weight.dtype !== 'float32') return null;
  for (const p of [bias, weight, bnBias, rm, rv]) if (p.device !== 'cpu' || p.dtype !== 'float32') return null;
  if (bn.numFeatures !== conv.outChannels) return null; // let BatchNorm2d raise its own error
  return t.tidy(() => {
    const z = conv.convolve(x, false);
    if (bn.training && z.size / z.dim(1) <= 1) return null; // BatchNorm2d raises its usual error
    const momentum = bn.countBatch();
    return t.biasGeluBatchNorm(z, bias, { weight, bias: bnBias, runningMean: rm, runningVar: rv, training: bn.training, momentum, eps: bn.eps });
  });
}
