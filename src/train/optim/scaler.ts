// Loss scaling for float16 training, as torch.cuda.amp.GradScaler.
import { Tensor, full, noGrad, tidy, keep, mul, fill_, mul_, all, isfinite } from '../../tensor/index.js';
import { foreach } from './foreach.js';
import { runKernel, runKernelInPlace } from '../../tensor/kernels.js';
import { wrap } from '../../tensor/tensor.js';
import type { Optimizer } from './optimizer.js';

export interface GradScalerOptions {
  initScale?: number;
  growthFactor?: number;
  backoffFactor?: number;
  growthInterval?: number;
  enabled?: boolean;
}

export class GradScaler {
  readonly enabled: boolean;
  #scale: Tensor | null = null;
  #growth: Tensor | null = null;
  #foundInf: Tensor | null = null;
  #unscaled = false;
  readonly o: Required<GradScalerOptions>;

  constructor(o: GradScalerOptions = {}) {
    this.o = { initScale: 2 ** 16, growthFactor: 2, backoffFactor: 0.5, growthInterval: 2000, enabled: true, ...o };
    this.enabled = this.o.enabled;
  }

  private ensure(device: string): void {
    if (this.#scale) return;
    this.#scale = keep(full([1], this.o.initScale, { device }));
    this.#growth = keep(full([1], 0, { device, dtype: 'int32' }));
    this.#foundInf = keep(full([1], 0, { device }));
  }

  /** loss * scale (the caller disposes the result). */
  scale(loss: Tensor): Tensor {
    if (!this.enabled) return loss.clone();
    this.ensure(loss.device);
    return mul(loss, this.#scale!);
  }

  /** Divides gradients by the scale in place and records whether any is inf/NaN. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any optimizer, whatever its options type
  unscale(opt: Optimizer<never> | Optimizer<any>): void {
    if (!this.enabled || this.#unscaled) return;
    this.ensure(opt.groups[0]!.params[0]!.device);
    noGrad(() =>
      tidy(() => {
        const grads = opt.groups
          .flatMap((g) => g.params)
          .map((p) => p.grad)
          .filter((g): g is Tensor => g !== null);
        if (this.#scale!.device === 'cpu') {
          // libtorch 1.13 has the fused AMP kernels for CUDA only; on CPU the same logic as plain ops.
          const finite = grads.every((g) => all(isfinite(g)).item() !== 0);
          fill_(this.#foundInf!, finite ? 0 : 1);
          if (grads.length) foreach.mulScalar_(grads, 1 / this.#scale!.item());
          return;
        }
        const inv = this.#scale!.pow(-1);
        fill_(this.#foundInf!, 0);
        runKernelInPlace('GradScaler.unscale', 'ampUnscale_', [grads.map((g) => g.handle), this.#foundInf!.handle, inv.handle]);
      }),
    );
    this.#unscaled = true;
  }

  /** Unscales if needed, then steps unless a gradient overflowed. Returns whether it stepped. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any optimizer, whatever its options type
  step(opt: Optimizer<any>): boolean {
    if (!this.enabled) {
      opt.step();
      return true;
    }
    this.unscale(opt);
    const overflow = this.#foundInf!.item() !== 0; // one sync per step, as PyTorch's scaler
    if (!overflow) opt.step();
    return !overflow;
  }

  /** Adjusts the scale: backs off after an overflow, grows after growthInterval clean steps. */
  update(): void {
    if (!this.enabled || !this.#scale) return;
    if (this.#scale.device === 'cpu') {
      this.updateCpu();
      this.#unscaled = false;
      return;
    }
    const out = runKernel('GradScaler.update', 'ampUpdateScale_', [
      this.#scale.handle,
      this.#growth!.handle,
      this.#foundInf!.handle,
      this.o.growthFactor,
      this.o.backoffFactor,
      this.o.growthInterval,
    ]);
    wrap(out).dispose();
    this.#unscaled = false;
  }

  /** _amp_update_scale_'s rule, for CPU where libtorch 1.13 lacks the kernel. */
  private updateCpu(): void {
    const { growthFactor, backoffFactor, growthInterval } = this.o;
    if (this.#foundInf!.item() !== 0) {
      mul_(this.#scale!, backoffFactor);
      fill_(this.#growth!, 0);
      return;
    }
    const successful = this.#growth!.item() + 1;
    if (successful === growthInterval) {
      if (Number.isFinite(this.#scale!.item() * growthFactor)) mul_(this.#scale!, growthFactor);
      fill_(this.#growth!, 0);
    } else {
      fill_(this.#growth!, successful);
    }
  }

  getScale(): number {
    return this.#scale ? this.#scale.item() : this.o.initScale;
  }

  stateDict(): { scale: number; growthTracker: number } {
    return { scale: this.getScale(), growthTracker: this.#growth ? this.#growth.item() : 0 };
  }

  loadStateDict(s: { scale: number; growthTracker: number }, device = 'cpu'): void {
    this.dispose();
    this.o.initScale = s.scale;
    this.ensure(device);
    fill_(this.#growth!, s.growthTracker);
  }

  dispose(): void {
    for (const t of [this.#scale, this.#growth, this.#foundInf]) t?.dispose();
    this.#scale = this.#growth = this.#foundInf = null;
  }
}
