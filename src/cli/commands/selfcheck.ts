// `kshare selfcheck`: proves the native engine works on this machine (build, ops, autograd).
import type { Command } from 'commander';
import { parseDevice, requireDevice } from '../device.js';
import * as t from '../../tensor/index.js';

export function register(program: Command): void {
  program
    .command('selfcheck')
    .description('check that libtorch is reachable and a tiny training step works')
    .option('--device <device>', 'cpu, cuda or cuda:N', parseDevice, 'cpu')
    .action((o: { device: string }) => {
      requireDevice(o.device);
      const info = t.runtimeInfo();
      console.log(
        `libtorch ${info.torchVersion}, CUDA ${info.cudaAvailable ? `available (${info.cudaDeviceCount} device(s))` : 'not available'}, ${info.numThreads} CPU thread(s)`,
      );
      t.manualSeed(0);
      const before = t.liveTensors();
      const w = t.randn([8, 3, 3, 3], { device: o.device, requiresGrad: true });
      const loss0 = t.tidy(() => {
        const x = t.randn([4, 3, 16, 16], { device: o.device });
        const y = t.gelu(t.conv2d(x, w, null, { padding: 1 }));
        const loss = y.pow(2).mean();
        loss.backward();
        return loss.item();
      });
      const g = w.grad!;
      const gn = t.tidy(() => t.norm(g).item());
      g.dispose();
      w.dispose();
      const leaked = t.liveTensors() - before;
      console.log(`conv2d + GELU forward/backward on ${o.device}: loss ${loss0.toFixed(6)}, grad norm ${gn.toFixed(6)}, leaked tensors ${leaked}`);
      if (!(gn > 0) || leaked !== 0) throw new Error('selfcheck failed');
      console.log('selfcheck ok');
    });
}
