// Learning-rate schedules as pure functions of the global iteration, so a resumed run needs
// nothing but the iteration count to continue exactly.

export type ScheduleConfig =
  | {
      /** ConvNeXt's per-iteration cosine_scheduler (linear warm-up, then cosine to minLr). */
      type: 'cosine';
      minLr: number;
      warmupEpochs: number;
      /** Overrides warmupEpochs when > 0 (ConvNeXt's warmup_steps). */
      warmupSteps?: number;
      warmupStartLr?: number;
    }
  | {
      /** torch's MultiStepLR stepped once per epoch: lr · gamma^(milestones passed). */
      type: 'multistep';
      milestones: number[];
      gamma: number;
    }
  | { type: 'constant' };

export interface ScheduleContext {
  baseLr: number;
  epochs: number;
  itersPerEpoch: number;
}

/** Learning rate for 0-based global iteration `it` (epoch = floor(it / itersPerEpoch)). */
export function learningRate(s: ScheduleConfig, ctx: ScheduleContext, it: number): number {
  const { baseLr, epochs, itersPerEpoch } = ctx;
  switch (s.type) {
    case 'constant':
      return baseLr;
    case 'multistep': {
      const epoch = Math.floor(it / itersPerEpoch);
      const passed = s.milestones.filter((m) => m <= epoch).length;
      return baseLr * s.gamma ** passed;
    }
    case 'cosine': {
      const total = epochs * itersPerEpoch;
      const warmup = s.warmupSteps && s.warmupSteps > 0 ? s.warmupSteps : s.warmupEpochs * itersPerEpoch;
      const start = s.warmupStartLr ?? 0;
      if (it < warmup) {
        // np.linspace(start, base, warmup): both ends included.
        return warmup === 1 ? start : start + ((baseLr - start) * it) / (warmup - 1);
      }
      const cosIters = total - warmup;
      const i = Math.min(it - warmup, Math.max(cosIters - 1, 0));
      return s.minLr + 0.5 * (baseLr - s.minLr) * (1 + Math.cos((Math.PI * i) / Math.max(cosIters, 1)));
    }
  }
}

export function validateSchedule(s: ScheduleConfig, where: string): void {
  const bad = (msg: string): never => {
    throw new Error(`${where}: ${msg}`);
  };
  if (!s || typeof s !== 'object') bad('schedule must be an object');
  if (s.type === 'constant') return;
  if (s.type === 'multistep') {
    if (!Array.isArray(s.milestones) || s.milestones.some((m) => !Number.isInteger(m) || m < 0))
      bad(`schedule.milestones must be a list of epoch numbers, got ${JSON.stringify(s.milestones)}`);
    if (!(typeof s.gamma === 'number' && s.gamma > 0 && Number.isFinite(s.gamma)))
      bad(`schedule.gamma must be a positive number, got ${JSON.stringify(s.gamma)}`);
    return;
  }
  if (s.type === 'cosine') {
    if (!(s.minLr >= 0)) bad(`schedule.minLr must be >= 0, got ${JSON.stringify(s.minLr)}`);
    if (!(s.warmupEpochs >= 0) || !Number.isInteger(s.warmupEpochs))
      bad(`schedule.warmupEpochs must be a non-negative integer, got ${JSON.stringify(s.warmupEpochs)}`);
    if (s.warmupSteps !== undefined && !(Number.isInteger(s.warmupSteps) && s.warmupSteps >= 0))
      bad(`schedule.warmupSteps must be a non-negative integer, got ${JSON.stringify(s.warmupSteps)}`);
    if (s.warmupStartLr !== undefined && !(s.warmupStartLr >= 0)) bad(`schedule.warmupStartLr must be >= 0, got ${JSON.stringify(s.warmupStartLr)}`);
    return;
  }
  bad(`schedule.type must be cosine, multistep or constant, got ${JSON.stringify((s as { type?: unknown }).type)}`);
}
