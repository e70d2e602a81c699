// kshare's public API, one namespace per layer of the architecture.
export * as tensor from './tensor/index.js';
export * as nn from './nn/index.js';
export * as models from './models/index.js';
export * as data from './data/index.js';
export * as train from './train/index.js';
export * as optim from './train/optim/index.js';
