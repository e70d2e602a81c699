// Data-parallel training over PyTorch's c10d: process groups, DDP semantics, the launcher.
export { ProcessGroup, Work, distributedBinding, type ProcessGroupOptions } from './process-group.js';
export { DataParallel, distinctTrainable, broadcastTensors, allReduceNumbers, type DataParallelOptions, type StepCommStats } from './data-parallel.js';
export { distributedEnv, type DistributedEnv } from './env.js';
export { DataParallelTraining, checkResumeWorldSize, agreeOnNumber, DISTRIBUTED_FILE, type CommTotals, type DistributedRunInfo } from './trainer-hooks.js';
export { launchLocal, freeLoopbackPort, exitWithLauncher, type LaunchOptions } from './launch.js';
export { runDistributedWorker, launchFromCli, type WorkerOptions } from './cli.js';
