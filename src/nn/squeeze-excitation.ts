// Squeeze-and-excitation channel gating.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';
import { AdaptiveAvgPool2d, ReLU, Sigmoid } from './activation.js';
import { Linear } from './linear.js';
import { Sequential } from './container.js';

/**
 * y = x · s, s = sigmoid(fc2(relu(fc1(mean_hw(x))))) broadcast over H and W.
 * Children: avg_pool, fc = Sequential(Linear(C, C/r, no bias), ReLU, Linear(C/r, C, no bias), Sigmoid),
 * hence the keys fc.0.weight and fc.2.weight of the original SELayer.
 */
export class SqueezeExcitation extends Module {
  readonly hidden: number;
  readonly avgPool: AdaptiveAvgPool2d;
  readonly fc: Sequential;

  constructor(
    readonly channels: number,
    readonly reduction = 16,
  ) {
    super();
    this.hidden = Math.floor(channels / reduction);
    if (this.hidden < 1) throw new RangeError(`SqueezeExcitation: ${channels} channels / reduction ${reduction} leaves no hidden units`);
    this.avgPool = this.registerModule('avg_pool', new AdaptiveAvgPool2d(1));
    this.fc = this.registerModule(
      'fc',
      new Sequential(new Linear(channels, this.hidden, { bias: false }), new ReLU(), new Linear(this.hidden, channels, { bias: false }), new Sigmoid()),
    );
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => t.mul(x, this.scale(x)));
  }

  /**
   * [relu](forward(x) + residual) in one pass (t.channelScaleAdd): a residual block's tail,
   * with `relu` for the post-activation form. `pooled`, when given, is x's mean over each (n, c)
   * plane, [N, C], already computed (BatchNorm2d.forwardPooled), and stands in for the pooling.
   */
  forwardResidual(x: Tensor, residual: Tensor, relu: boolean, pooled?: Tensor): Tensor {
    return t.tidy(() => {
      if (this.forwardReplaced) {
        const y = t.add(this.forward(x), residual);
        return relu ? t.relu(y) : y;
      }
      return t.channelScaleAdd(x, this.scale(x, pooled), residual, { relu });
    });
  }

  /** The per-(image, channel) scale, shape [N, C, 1, 1], from x's plane means (`pooled` if given). */
  private scale(x: Tensor, pooled?: Tensor): Tensor {
    const [b, c] = [x.dim(0), x.dim(1)];
    if (pooled && pooled.shape.join() !== `${b},${c}`) throw new Error(`SqueezeExcitation: pooled must have shape [${b}, ${c}], got [${pooled.shape}]`);
    return this.fc.forward(pooled ?? this.avgPool.forward(x).view([b, c])).view([b, c, 1, 1]);
  }

  describe(): string {
    return `${this.channels}, reduction=${this.reduction}`;
  }
}
