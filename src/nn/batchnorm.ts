// BatchNorm2d with running statistics kept as buffers (PyTorch's names and defaults).
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';

export interface BatchNormOptions {
  eps?: number;
  /** Running-stat factor; null = cumulative average (1 / batches seen), as in PyTorch. */
  momentum?: number | null;
  affine?: boolean;
  trackRunningStats?: boolean;
}

/**
 * Training mode (or no running stats): normalises with the batch statistics and updates
 * running_mean / running_var / num_batches_tracked. Eval mode: uses the running statistics.
 */
export class BatchNorm2d extends Module {
  readonly eps: number;
  readonly momentum: number | null;
  readonly affine: boolean;
  readonly trackRunningStats: boolean;

  constructor(
    readonly numFeatures: number,
    o: BatchNormOptions = {},
  ) {
    super();
    if (!Number.isInteger(numFeatures) || numFeatures < 1) throw new RangeError(`BatchNorm2d: numFeatures must be a positive integer, got ${numFeatures}`);
    this.eps = o.eps ?? 1e-5;
    this.momentum = o.momentum === undefined ? 0.1 : o.momentum;
    this.affine = o.affine ?? true;
    this.trackRunningStats = o.trackRunningStats ?? true;
    this.registerParameter('weight', this.affine ? t.ones([numFeatures], { requiresGrad: true }) : null);
    this.registerParameter('bias', this.affine ? t.zeros([numFeatures], { requiresGrad: true }) : null);
    this.registerBuffer('running_mean', this.trackRunningStats ? t.zeros([numFeatures]) : null);
    this.registerBuffer('running_var', this.trackRunningStats ? t.ones([numFeatures]) : null);
    this.registerBuffer('num_batches_tracked', this.trackRunningStats ? t.zeros([], { dtype: 'int64' }) : null);
  }

  get weight(): Tensor | null {
    return this.getParameter('weight');
  }
  get bias(): Tensor | null {
    return this.getParameter('bias');
  }
  get runningMean(): Tensor | null {
    return this.getBuffer('running_mean');
  }
  get runningVar(): Tensor | null {
    return this.getBuffer('running_var');
  }
  get numBatchesTracked(): Tensor | null {
    return this.getBuffer('num_batches_tracked');
  }

  forward(x: Tensor): Tensor {
    return t.batchNorm(x, this.normOptions(x));
  }

  /** relu(forward(x)), fused on CPU where t.batchNormRelu applies (SE-ResNet's BN -> ReLU). */
  forwardRelu(x: Tensor): Tensor {
    return t.batchNormRelu(x, this.normOptions(x));
  }

  /**
   * [forward(x), its mean over each (n, c) plane as [N, C]] (a squeeze-excitation block's
   * BatchNorm and pooling), in one kernel where t.batchNormPool applies.
   */
  forwardPooled(x: Tensor): [Tensor, Tensor] {
    if (this.forwardReplaced) {
      return t.tidy(() => {
        const y = this.forward(x);
        return [y, t.adaptiveAvgPool2d(y, 1).view([x.dim(0), x.dim(1)])];
      });
    }
    return t.batchNormPool(x, this.normOptions(x));
  }

  /** Checks x, counts the batch, and gives the batchNorm options for this mode. */
  private normOptions(x: Tensor): t.BatchNormOptions {
    if (x.rank !== 4) throw new Error(`BatchNorm2d: expected a 4-D input (N, C, H, W), got shape [${x.shape}]`);
    if (x.dim(1) !== this.numFeatures) throw new Error(`BatchNorm2d(${this.numFeatures}): input has ${x.dim(1)} channels`);
    const momentum = this.countBatch();
    const useBatchStats = this.training || !this.trackRunningStats;
    return {
      weight: this.weight,
      bias: this.bias,
      // Eval without running stats normalises with batch statistics, as PyTorch does.
      runningMean: this.training || this.trackRunningStats ? this.runningMean : null,
      runningVar: this.training || this.trackRunningStats ? this.runningVar : null,
      training: useBatchStats,
      momentum,
      eps: this.eps,
    };
  }

  /**
   * In training mode counts one more batch in num_batches_tracked; returns the running-stat
   * momentum for this batch (the cumulative-average factor when momentum is null).
   */
  countBatch(): number {
    let momentum = this.momentum ?? 0;
    const nbt = this.numBatchesTracked;
    if (this.training && nbt) {
      t.noGrad(() => t.add_(nbt, 1));
      if (this.momentum === null) momentum = 1 / nbt.item();
    }
    return momentum;
  }

  describe(): string {
    return `${this.numFeatures}, eps=${this.eps}, momentum=${this.momentum}${this.affine ? '' : ', affine=false'}`;
  }
}
