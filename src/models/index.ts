// Models: the paper's architectures, the registry, inspection and weight files.
export { ConvMixer, CONVMIXER_SHARING, type ConvMixerConfig, type ConvMixerSharing } from './convmixer.js';
export { SEResNet, SEBasicBlock, BN_MOMENTUM, type SEResNetConfig, type SEBasicBlockOptions } from './se-resnet.js';
export { validateConfig, buildFromConfig, describeConfig, ARCHITECTURES, type ModelConfig, type ConvMixerModelConfig, type SEResNetModelConfig } from './config.js';
export {
  createModel, listModels, registerModel, loadModelConfigFile, modelConfig, configFromName, suggestModels,
  type ModelEntry, type ModelFactory, type CreateModelOptions,
} from './registry.js';
export { modelSummary, formatSummary, traceShapes, type ModelSummary, type LayerRow } from './summary.js';
export {
  saveSafetensors, loadSafetensors, readSafetensorsHeader, writeFileAtomic, SafetensorsError,
  type SafetensorsEntry, type SafetensorsHeader,
} from './safetensors.js';
export { saveWeights, loadWeights, uniqueState, expandAliases, parseAliases, ALIASES_KEY } from './weights.js';
export { checkStoredConfig, stateShapes, STORED_CONFIG_BOUNDS } from './stored-config.js';
