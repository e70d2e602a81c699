// kshare's tensor library: libtorch tensors, ops, autograd and memory scopes.
export { Tensor, isTensor } from './tensor.js';
export { DTYPES, type DType, type Device, isFloating, elementBytes } from './dtype.js';
export { tidy, keep, dispose, liveTensors, noGrad, enableGrad, isGradEnabled } from './engine.js';
export { ShapeError } from './validate.js';
export * from './ops/creation.js';
export * from './ops/convert.js';
export * from './ops/elementwise.js';
export * from './ops/reduce.js';
export * from './ops/shape.js';
export * from './ops/conv.js';
export * from './ops/norm.js';
export * from './ops/linear.js';
export * from './ops/pool.js';
export * from './ops/activation.js';
export * from './ops/loss.js';
export * from './ops/sampling.js';
export * from './runtime.js';
export { kernelSchema, KERNELS } from './kernels.js';
