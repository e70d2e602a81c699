// Models: the paper's architectures, the registry, inspection and weight files.
export { ConvMixer, CONVMIXER_SHARING, convmixerSpec, type ConvMixerConfig, type ConvMixerSharing, type ConvMixerFields } from './convmixer.js';
export { SEResNet, SEBasicBlock, BN_MOMENTUM, seResnetSpec, type SEResNetConfig, type SEBasicBlockOptions, type SEResNetFields } from './se-resnet.js';
export {
  validateConfig,
  buildFromConfig,
  describeConfig,
  resolveConfig,
  inputSpecOf,
  recipeOf,
  registerArchitecture,
  architectures,
  architectureSpec,
  ARCHITECTURES,
  type ModelConfig,
} from './config.js';
export {
  defineArchitecture,
  field,
  cifarInput,
  IMAGENET_NORM,
  CIFAR_NORM,
  type ArchitectureSpec,
  type Field,
  type InputSpec,
  type NamedConfig,
} from './spec.js';
export { BUILTIN_ARCHITECTURES } from './architectures.js';
export {
  createModel,
  listModels,
  registerModel,
  loadModelConfigFile,
  modelConfig,
  configFromName,
  suggestModels,
  namePatterns,
  modelInputSpec,
  modelRecipe,
  modelCpuMemoryFormat,
  trainsChannelsLast,
  type ModelEntry,
  type ModelFactory,
  type CreateModelOptions,
} from './registry.js';
export { modelSummary, formatSummary, traceShapes, type ModelSummary, type LayerRow } from './summary.js';
export {
  saveSafetensors,
  loadSafetensors,
  readSafetensorsHeader,
  writeFileAtomic,
  SafetensorsError,
  type SafetensorsEntry,
  type SafetensorsHeader,
} from './safetensors.js';
export { saveWeights, loadWeights, uniqueState, expandAliases, parseAliases, ALIASES_KEY } from './weights.js';
export { checkStoredConfig, stateShapes, STORED_CONFIG_BOUNDS } from './stored-config.js';
