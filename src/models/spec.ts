// Architecture specs: everything kshare knows about one architecture, kept in that
// architecture's own file (src/models/<arch>.ts) and listed once in ./architectures.ts.
// The registry, config files, checkpoints, export and the CLI read these specs; none of them
// names an architecture. docs/adding-an-architecture.md walks through a complete example.
import type { Module } from '../nn/index.js';
import type { MemoryFormat } from '../tensor/index.js';

/** A memory format a model can run in (a layout, not 'preserve'). */
export type CpuMemoryFormat = Exclude<MemoryFormat, 'preserve'>;

/** What a deployed model expects as input: size and per-channel normalisation of [0, 1] pixels. */
export interface InputSpec {
  channels: number;
  height: number;
  width: number;
  /** Per-channel mean and std applied to pixel values scaled to [0, 1]. */
  mean: number[];
  std: number[];
}

/** ImageNet statistics (the ConvMixer recipe normalises CIFAR with these, as timm does). */
export const IMAGENET_NORM = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
/** CIFAR statistics used by the SE-ResNet recipe. */
export const CIFAR_NORM = { mean: [0.4914, 0.4822, 0.4465], std: [0.2023, 0.1994, 0.201] };

/** A 3x32x32 input (CIFAR size) with the given normalisation. */
export function cifarInput(norm: { mean: number[]; std: number[] }): InputSpec {
  return { channels: 3, height: 32, width: 32, mean: [...norm.mean], std: [...norm.std] };
}

/** One config field: its check (with bounds), the text an error shows, and its default. */
export interface Field<T> {
  /** The allowed values in words, e.g. 'an integer in [1, 4096]'. */
  readonly expect: string;
  check(v: unknown): boolean;
  /** Value when the config leaves the field out; a field without one is required. */
  readonly default?: T;
}

const isInt = (v: unknown, min: number, max: number): v is number => Number.isInteger(v) && (v as number) >= min && (v as number) <= max;

/** Field constructors. Bounds keep a config (or a tampered checkpoint) from asking for absurd memory. */
export const field = {
  int(min: number, max: number, dflt?: number): Field<number> {
    return { expect: `an integer in [${min}, ${max}]`, check: (v) => isInt(v, min, max), default: dflt };
  },
  /** A number in [min, max) (max excluded: e.g. a dropout probability below 1). */
  fraction(min: number, max: number, dflt?: number): Field<number> {
    return { expect: `a number in [${min}, ${max})`, check: (v) => typeof v === 'number' && v >= min && v < max, default: dflt };
  },
  bool(dflt?: boolean): Field<boolean> {
    return { expect: 'a boolean', check: (v) => typeof v === 'boolean', default: dflt };
  },
  oneOf<T extends string>(values: readonly T[], dflt?: T): Field<T> {
    return { expect: `one of ${values.join(', ')}`, check: (v) => (values as readonly unknown[]).includes(v), default: dflt };
  },
  /** A fixed-length list of booleans (T: its tuple type). */
  bools<T extends boolean[]>(n: number, what: string, dflt?: T): Field<T> {
    return { expect: `${n} booleans (${what})`, check: (v) => Array.isArray(v) && v.length === n && v.every((x) => typeof x === 'boolean'), default: dflt };
  },
  /** A fixed-length list of bounded integers (T: its tuple type). */
  ints<T extends number[]>(n: number, min: number, max: number, what: string, dflt?: T): Field<T> {
    return {
      expect: `${n} integers in [${min}, ${max}] (${what})`,
      check: (v) => Array.isArray(v) && v.length === n && v.every((x) => isInt(x, min, max)),
      default: dflt,
    };
  },
};

/** Tensors a file must hold with these shapes, and names it must not hold (one block past the last). */
export interface StoredTensorCheck {
  readonly expect: readonly (readonly [name: string, shape: readonly number[]])[];
  readonly absent: readonly string[];
}

/** A registered name and the config it stands for (plus an optional description). */
export type NamedConfig<C> = [name: string, config: Partial<C>, description?: string];

/**
 * One architecture. `C` is its resolved config: every field present (defaults applied).
 * Configs as written (JSON files, checkpoints, registry entries) may leave out fields that
 * have defaults, and carry 'architecture', 'plan' and 'description' besides.
 */
export interface ArchitectureSpec<C extends object = Record<string, unknown>> {
  /** The 'architecture' value of its configs, e.g. 'convmixer'. */
  readonly architecture: string;
  /** One line about the architecture, for `kshare models`. */
  readonly about: string;
  readonly fields: { readonly [K in keyof C]-?: Field<C[K]> };
  /** Extra checks across fields (after each field passed its own); return a problem or null. */
  readonly crossCheck?: (c: C) => string | null;
  build(c: C, classes: number): Module;
  /**
   * Tensors whose shapes pin a config's sizes (stem, first and last block of each stage, head),
   * so a stored config is checked against a file's header before anything is built.
   */
  storedTensors?(c: C, classes: number): StoredTensorCheck;
  /** One line saying what a config builds, e.g. 'ConvMixer-256/16, kernel 9, patch 1, no sharing'. */
  describe(c: C): string;
  /** The input size and normalisation the architecture's default recipe trains with. */
  input(c: C): InputSpec;
  /** Name of the recipe (recipes/<name>.json) used when a command needs one and none is given. */
  readonly recipe: string;
  /**
   * The memory format CPU inference (`kshare eval`, `kshare predict`) runs the model in; default
   * 'channels_last' (oneDNN's convolutions without layout reorders). Measure before choosing:
   * kshare's NCHW kernels make 'contiguous' the faster one for some architectures.
   */
  readonly cpuMemoryFormat?: CpuMemoryFormat;
  readonly names: {
    /** The name pattern in words, e.g. 'convmixer_<dim>_<depth>[_k<k>][_p<p>][_shared|_shared_dw|_shared_pw]'. */
    readonly pattern: string;
    /** The config a registry-style name stands for, or null when the name is not of this pattern. */
    parse(name: string): Partial<C> | null;
    /** Names registered at start-up, in `kshare models` order. */
    readonly builtins: readonly NamedConfig<C>[];
  };
}

/** Helps TypeScript check a spec literal against its config type. */
export function defineArchitecture<C extends object>(spec: ArchitectureSpec<C>): ArchitectureSpec<C> {
  return spec;
}
