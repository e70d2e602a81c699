// Training: recipes, augmentation on the training device, schedules, the loop with
// checkpoints and exact resume, evaluation and reports.
export * from './optim/index.js';
export { train, countParameters, NonFiniteLossError, type TrainOptions, type TrainSummary, type ParameterCounts } from './trainer.js';
export { evaluate, type EvalOptions, type EvalResult } from './evaluate.js';
export { loadRecipe, validateRecipe, applyOverrides, parseOverride, listRecipes, recipesDir, type Recipe, type OptimizerConfig } from './recipe.js';
export { learningRate, validateSchedule, type ScheduleConfig, type ScheduleContext } from './schedule.js';
export { buildOptimizer, isNoDecay, type AnyOptimizer } from './build-optimizer.js';
export {
  saveCheckpoint,
  readCheckpoint,
  readCheckpointMeta,
  storedModelConfig,
  assertFinite,
  restoreModel,
  restoreOptimizer,
  CHECKPOINT_KEY,
  type CheckpointMeta,
  type EpochRecord,
  type LoadedCheckpoint,
} from './checkpoint.js';
export { TrainAugment, normalize, validateAugment, type AugmentConfig, type AugmentedBatch } from './augment/pipeline.js';
export { parseRandAugment, RAND_INCREASING_OPS, RAND_OPS, type RandAugmentConfig } from './augment/rand-augment.js';
export { HostRandom } from './augment/random.js';
export { loadSplit, loadSplits } from './datasets.js';
export {
  writeReport,
  loadRun,
  markdownTable,
  markdownReport,
  aggregate,
  sharingFindings,
  stat,
  readSteps,
  expandRunDirs,
  placeLabels,
  STEPS_FILE,
  type RunData,
  type StepRecord,
  type ConfigRow,
  type Stat,
} from './report.js';
export {
  readSweepSpec,
  validateSweepSpec,
  planSweep,
  runSweep,
  runState,
  estimateLeft,
  SWEEP_FILE,
  SWEEP_RUN_FILE,
  type SweepSpec,
  type SweepPlan,
  type SweepRun,
  type SweepResult,
  type SweepRunRecord,
} from './sweep.js';
export { probeSweep, type SweepTiming } from './sweep-probe.js';
export { LOG_FILE, SUMMARY_FILE, CHECKPOINT_FILE, readLog } from './run-log.js';
export { acquireRunLock, removeStaleTemps, processAlive, RunLockedError, LOCK_FILE, type RunLock } from './run-lock.js';
