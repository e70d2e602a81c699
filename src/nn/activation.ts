// Parameter-free layers: activations, dropout, flatten, pooling.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';

/** Exact (erf) GELU, or the tanh approximation. */
export class GELU extends Module {
  constructor(readonly approximate: 'none' | 'tanh' = 'none') {
    super();
  }
  forward(x: Tensor): Tensor {
    return t.gelu(x, this.approximate);
  }
  describe(): string {
    return this.approximate === 'none' ? '' : `approximate=${this.approximate}`;
  }
}

export class ReLU extends Module {
  forward(x: Tensor): Tensor {
    return t.relu(x);
  }
}

/** min(max(x, 0), 6), MobileNet's activation. */
export class ReLU6 extends Module {
  forward(x: Tensor): Tensor {
    return t.clamp(x, 0, 6);
  }
}

export class Sigmoid extends Module {
  forward(x: Tensor): Tensor {
    return t.sigmoid(x);
  }
}

/** Zeroes with probability p and scales by 1/(1-p) in training mode; identity in eval mode. */
export class Dropout extends Module {
  constructor(readonly p = 0.5) {
    super();
    if (!(p >= 0 && p <= 1)) throw new RangeError(`Dropout: p must be in [0, 1], got ${p}`);
  }
  forward(x: Tensor): Tensor {
    return t.dropout(x, this.p, this.training);
  }
  describe(): string {
    return `p=${this.p}`;
  }
}

/** Flattens dims startDim..endDim into one (default: everything but the batch dim). */
export class Flatten extends Module {
  constructor(
    readonly startDim = 1,
    readonly endDim = -1,
  ) {
    super();
  }
  forward(x: Tensor): Tensor {
    return t.flatten(x, this.startDim, this.endDim);
  }
  describe(): string {
    return this.startDim === 1 && this.endDim === -1 ? '' : `start=${this.startDim}, end=${this.endDim}`;
  }
}

/** Averages (N, C, H, W) into (N, C, outH, outW) bins, PyTorch's bin edges. */
export class AdaptiveAvgPool2d extends Module {
  readonly outputSize: [number, number];
  constructor(outputSize: number | [number, number] = 1) {
    super();
    this.outputSize = typeof outputSize === 'number' ? [outputSize, outputSize] : [outputSize[0], outputSize[1]];
  }
  forward(x: Tensor): Tensor {
    return t.adaptiveAvgPool2d(x, this.outputSize);
  }
  describe(): string {
    return `${this.outputSize[0]}x${this.outputSize[1]}`;
  }
}

/** Max pooling over kernel windows (ResNet's ImageNet stem: 3x3, stride 2, padding 1). */
export class MaxPool2d extends Module {
  readonly kernelSize: [number, number];
  readonly stride: [number, number];
  readonly padding: [number, number];
  constructor(kernelSize: number, stride = kernelSize, padding = 0) {
    super();
    this.kernelSize = [kernelSize, kernelSize];
    this.stride = [stride, stride];
    this.padding = [padding, padding];
  }
  forward(x: Tensor): Tensor {
    return t.maxPool2d(x, this.kernelSize, this.stride, this.padding);
  }
  describe(): string {
    return `k=${this.kernelSize[0]}, stride=${this.stride[0]}, padding=${this.padding[0]}`;
  }
}
