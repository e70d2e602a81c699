// The recipe's optimiser over a model's unique parameters (a shared kernel is one parameter).
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { AdamW, SGD, type Optimizer } from './optim/index.js';
import type { OptimizerConfig } from './recipe.js';

/** ConvNeXt's get_parameter_groups rule: 1-D tensors (norms, biases) and `.bias` names get no decay. */
export function isNoDecay(name: string, p: Tensor): boolean {
  return p.rank <= 1 || name.endsWith('.bias');
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyOptimizer = Optimizer<any>;

export function buildOptimizer(model: Module, cfg: OptimizerConfig): AnyOptimizer {
  const named = model.namedParameters().filter(([, p]) => p.requiresGrad);
  if (!named.length) throw new Error('the model has no trainable parameters');
  if (cfg.type === 'sgd') {
    return new SGD(
      named.map(([, p]) => p),
      { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay, nesterov: cfg.nesterov, dampening: cfg.dampening },
    );
  }
  const opts = { lr: cfg.lr, betas: [...cfg.betas], eps: cfg.eps, weightDecay: cfg.weightDecay };
  if (!cfg.noDecayOnNormsAndBiases)
    return new AdamW(
      named.map(([, p]) => p),
      opts,
    );
  const decay = named.filter(([n, p]) => !isNoDecay(n, p)).map(([, p]) => p);
  const noDecay = named.filter(([n, p]) => isNoDecay(n, p)).map(([, p]) => p);
  const groups = [{ params: decay }, { params: noDecay, options: { weightDecay: 0 } }].filter((g) => g.params.length > 0);
  return new AdamW(groups, opts);
}
