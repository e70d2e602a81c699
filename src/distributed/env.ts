// The standard variables with which torchrun, SLURM scripts and Kubernetes operators (Kubeflow's
// PyTorchJob) make a process one member of a job: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK,
// LOCAL_RANK. kshare reads the same ones, so it runs under those launchers unchanged.

export interface DistributedEnv {
  host: string;
  port: number;
  worldSize: number;
  rank: number;
  /** Index of this process on its machine (selects the GPU: cuda:<localRank>). */
  localRank: number;
  /** GLOO_SOCKET_IFNAME, as in PyTorch. */
  ifname?: string;
}

function intVar(env: NodeJS.ProcessEnv, name: string, lo: number, hi: number, fix: string): number {
  const raw = env[name];
  if (raw === undefined || raw === '') throw new Error(`${name} is not set, but WORLD_SIZE=${env.WORLD_SIZE} asks for a distributed run: ${fix}`);
  const n = Number(raw);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new Error(`${name}=${raw} must be an integer in [${lo}, ${hi}]: ${fix}`);
  return n;
}

/** The job this process belongs to, or null when WORLD_SIZE is not set (a single-process run). */
export function distributedEnv(env: NodeJS.ProcessEnv = process.env): DistributedEnv | null {
  if (env.WORLD_SIZE === undefined || env.WORLD_SIZE === '') return null;
  const worldSize = intVar(env, 'WORLD_SIZE', 1, 1 << 20, 'set it to the number of processes in the job');
  const rank = intVar(env, 'RANK', 0, worldSize - 1, "set it to this process's index in the job (0 .. WORLD_SIZE-1)");
  const localRank =
    env.LOCAL_RANK === undefined || env.LOCAL_RANK === '' ? rank : intVar(env, 'LOCAL_RANK', 0, worldSize - 1, "set it to this process's index on its machine");
  const host = env.MASTER_ADDR;
  if (!host)
    throw new Error(`MASTER_ADDR is not set, but WORLD_SIZE=${worldSize} asks for a distributed run: set it to the address of the machine running rank 0`);
  const port = intVar(env, 'MASTER_PORT', 1, 65535, 'set it to a free TCP port on the machine running rank 0 (e.g. 29500)');
  return { host, port, worldSize, rank, localRank, ifname: env.GLOO_SOCKET_IFNAME || undefined };
}
