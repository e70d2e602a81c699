// Neural-network modules and kernel sharing.
export { Module, listNames, type StateDict, type LoadStateDictOptions, type ToTarget } from './module.js';
export { Conv2d, type Conv2dOptions } from './conv.js';
export { Linear } from './linear.js';
export { BatchNorm2d, type BatchNormOptions } from './batchnorm.js';
export { GELU, ReLU, ReLU6, Sigmoid, Dropout, Flatten, AdaptiveAvgPool2d, MaxPool2d } from './activation.js';
export { Sequential, Residual } from './container.js';
export { SqueezeExcitation } from './squeeze-excitation.js';
export { SharedKernel, signatureMismatch, signatureText, type KernelSignature } from './shared-kernel.js';
export * as init from './init.js';
export {
  analyzeSharing,
  applySharingPlan,
  parseSharingPlan,
  planGroups,
  shareGroups,
  convolutions,
  candidatePlans,
  matchesAny,
  PLAN_KINDS,
  type SharingPlan,
  type ShareGroup,
  type SharingAnalysis,
  type PlanCost,
  type IsomorphismClass,
  type ConvEntry,
  type LayerFilter,
} from './sharing.js';
