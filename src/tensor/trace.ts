// Op tracing: while a tracer is active, every op front's kernel call is reported with its op
// name, libtorch kernel, arguments (tensor handles and attributes) and outputs. ONNX export
// (src/export/trace-to-onnx.ts) records one eval-mode forward pass this way.
//
// Fused fast paths (one kernel standing for several op fronts) should check `isTracing()` and
// take the unfused path, so a trace always shows ops the exporter knows how to map.
import { native, type Handle, type KernelArg } from './native.js';
import type { KernelName } from './kernels.js';
import { Tensor } from './tensor.js';

export interface TracedOp {
  /** The op front's name (e.g. 'conv2d', 'add'). */
  op: string;
  kernel: KernelName;
  /** Arguments as passed to the kernel: tensor handles, numbers, lists, strings, null. */
  args: readonly KernelArg[];
  /** What the kernel returned: one handle, or a list of handles. */
  out: unknown;
}

export type TraceHook = (call: TracedOp) => void;

let hook: TraceHook | null = null;

export function isTracing(): boolean {
  return hook !== null;
}

/** Called by runKernel after each kernel call. */
export function recordCall(op: string, kernel: KernelName, args: readonly KernelArg[], out: unknown): void {
  const h = hook;
  if (!h) return;
  // Ops the hook itself runs (e.g. reading weight values) are not part of the trace.
  hook = null;
  try {
    h({ op, kernel, args, out });
  } finally {
    hook = h;
  }
}

/** Runs fn with `onOp` told of every kernel call, in order; traces do not nest. */
export function withTracer<T>(onOp: TraceHook, fn: () => T): T {
  if (hook) throw new Error('withTracer: a trace is already running (traces do not nest)');
  hook = onOp;
  try {
    return fn();
  } finally {
    hook = null;
  }
}

/** True for a tensor handle among kernel arguments. */
export function isHandle(a: unknown): a is Handle {
  return typeof a === 'object' && a !== null && !Array.isArray(a) && !ArrayBuffer.isView(a);
}

/** Shape of the tensor behind a handle. */
export function handleShape(h: Handle): number[] {
  return native.meta(h)[2];
}

/** dtype code of the tensor behind a handle (compare two handles' codes; see dtype.ts for names). */
export function handleDtype(h: Handle): number {
  return native.meta(h)[0];
}

/** A second Tensor on the same data as a traced handle (the caller disposes it). */
export function borrowHandle(h: Handle): Tensor {
  return new Tensor(native.share(h));
}
