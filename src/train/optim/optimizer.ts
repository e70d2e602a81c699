// Optimizer base: parameter groups with per-group hyperparameters, and state that can be
// saved and restored. Updates run as in-place multi-tensor (_foreach) ops under no-grad.
import { Tensor, noGrad, tidy, keep, dispose } from '../../tensor/index.js';

export interface ParamGroup<H> {
  params: Tensor[];
  /** Hyperparameters of this group; unset fields fall back to the optimizer's defaults. */
  options: H;
}

export type ParamGroupInput<H> = Tensor[] | { params: Tensor[]; options?: Partial<H> }[];

/** Serializable optimizer state: hyperparameters per group and per-parameter tensors. */
export interface OptimizerState {
  kind: string;
  step: number;
  groups: Record<string, number | boolean | number[]>[];
  /** tensors[i] holds the state of the i-th parameter (in group order), by name. */
  tensors: Record<string, Tensor>[];
}

export abstract class Optimizer<H extends Record<string, number | boolean | number[]>> {
  readonly groups: ParamGroup<H>[];
  stepCount = 0;
  protected state = new Map<Tensor, Record<string, Tensor>>();

  constructor(
    params: ParamGroupInput<H>,
    defaults: H,
    readonly kind: string,
  ) {
    const list =
      Array.isArray(params) && params.every((p) => p instanceof Tensor)
        ? [{ params: params as Tensor[], options: {} }]
        : (params as { params: Tensor[]; options?: Partial<H> }[]);
    const seen = new Set<Tensor>();
    this.groups = list.map((g, gi) => {
      for (const p of g.params) {
        if (!(p instanceof Tensor)) throw new TypeError(`${kind}: group ${gi} contains something that is not a Tensor`);
        if (seen.has(p)) throw new Error(`${kind}: a parameter appears twice (shared parameters must be listed once)`);
        if (!p.requiresGrad) throw new Error(`${kind}: parameter ${p} does not require grad`);
        seen.add(p);
      }
      return { params: g.params, options: { ...defaults, ...(g.options ?? {}) } as H };
    });
    for (const g of this.groups) this.validate(g.options);
  }

  protected abstract validate(h: H): void;
  protected abstract updateGroup(group: ParamGroup<H>, params: Tensor[], grads: Tensor[]): void;

  /** Applies one update from the accumulated gradients; parameters without a grad are skipped. */
  step(): void {
    this.stepCount++;
    noGrad(() =>
      tidy(() => {
        for (const g of this.groups) {
          const params: Tensor[] = [];
          const grads: Tensor[] = [];
          for (const p of g.params) {
            const gr = p.grad;
            if (gr) {
              params.push(p);
              grads.push(gr);
            }
          }
          if (params.length) this.updateGroup(g, params, grads);
        }
      }),
    );
  }

  /** Drops all gradients (sets them to none, as PyTorch's set_to_none=True). */
  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad = null;
  }

  /** Per-parameter state tensors, created on first use and kept across steps. */
  protected stateOf(p: Tensor, init: () => Record<string, Tensor>): Record<string, Tensor> {
    let s = this.state.get(p);
    if (!s) {
      s = init();
      for (const t of Object.values(s)) keep(t);
      this.state.set(p, s);
    }
    return s;
  }

  get lr(): number {
    return this.groups[0]!.options.lr as number;
  }
  /** Sets the learning rate of every group (schedulers call this each iteration). */
  setLr(lr: number): void {
    for (const g of this.groups) (g.options as Record<string, unknown>).lr = lr;
  }

  /** A snapshot of hyperparameters and state (tensors are clones; dispose them when done). */
  stateDict(): OptimizerState {
    const tensors: Record<string, Tensor>[] = [];
    for (const g of this.groups) {
      for (const p of g.params) {
        const s = this.state.get(p);
        const out: Record<string, Tensor> = {};
        if (s) for (const [k, v] of Object.entries(s)) out[k] = v.clone();
        tensors.push(out);
      }
    }
    return { kind: this.kind, step: this.stepCount, groups: this.groups.map((g) => ({ ...g.options })), tensors };
  }

  loadStateDict(sd: OptimizerState): void {
    if (sd.kind !== this.kind) throw new Error(`${this.kind}: cannot load state of a ${sd.kind} optimizer`);
    if (sd.groups.length !== this.groups.length)
      throw new Error(`${this.kind}: state has ${sd.groups.length} parameter groups, optimizer has ${this.groups.length}`);
    const params = this.groups.flatMap((g) => g.params);
    if (sd.tensors.length !== params.length) throw new Error(`${this.kind}: state has ${sd.tensors.length} parameters, optimizer has ${params.length}`);
    this.groups.forEach((g, i) => Object.assign(g.options, sd.groups[i]));
    for (const s of this.state.values()) dispose(s);
    this.state.clear();
    params.forEach((p, i) => {
      const src = sd.tensors[i]!;
      if (!Object.keys(src).length) return;
      const s: Record<string, Tensor> = {};
      for (const [k, v] of Object.entries(src)) {
        if (k !== 'step' && v.shape.join(',') !== p.shape.join(',')) {
          throw new Error(`${this.kind}: state '${k}' of parameter ${i} has shape [${v.shape}], parameter has [${p.shape}]`);
        }
        s[k] = keep(v.to({ device: p.device, copy: true }));
      }
      this.state.set(p, s);
    });
    this.stepCount = sd.step;
  }

  /** Releases the optimizer's state tensors. */
  dispose(): void {
    for (const s of this.state.values()) dispose(s);
    this.state.clear();
  }
}
