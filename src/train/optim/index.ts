export { Optimizer, type OptimizerState, type ParamGroup, type ParamGroupInput } from './optimizer.js';
export { SGD, type SGDOptions } from './sgd.js';
export { AdamW, type AdamWOptions } from './adamw.js';
export { clipGradNorm } from './clip.js';
export { GradScaler, type GradScalerOptions } from './scaler.js';
export { scaledStep } from './scaled-step.js';
