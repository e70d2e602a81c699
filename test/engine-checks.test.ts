// Op fronts check devices on every path, and tidy keeps returned tensors at any nesting depth.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';

/** A tensor that reports another device (no second device on a CPU-only machine). */
function onOtherDevice(x: t.Tensor): t.Tensor {
  Object.defineProperty(x, 'device', { get: () => 'cuda:0' });
  return x;
}

test('add with alpha, maximum and minimum refuse operands on different devices, naming them', () => {
  t.tidy(() => {
    const a = t.ones([3]);
    const b = onOtherDevice(t.ones([3]));
    assert.throws(() => t.add(a, b, 2), /add: 'b' is on cuda:0 but 'a' is on cpu/);
    assert.throws(() => t.maximum(a, b), /maximum: 'b' is on cuda:0 but 'a' is on cpu/);
    assert.throws(() => t.minimum(a, b), /minimum: 'b' is on cuda:0 but 'a' is on cpu/);
    assert.throws(() => t.add(a, b), /add: 'b' is on cuda:0/);
  });
});

test('tidy keeps tensors returned at any depth and frees the rest; cycles end', () => {
  const live = t.liveTensors();
  const r = t.tidy(() => {
    t.ones([1]); // garbage
    const deep: Record<string, unknown> = { a: { b: { c: { d: { e: [[t.ones([2])]] } } } } };
    deep.self = deep;
    return deep;
  });
  const kept = ((((r.a as Record<string, unknown>).b as Record<string, unknown>).c as Record<string, unknown>).d as { e: t.Tensor[][] }).e[0]![0]!;
  assert.equal(kept.isDisposed, false, 'a tensor six levels down survives');
  assert.equal(t.liveTensors(), live + 1, 'only the returned tensor is left');
  kept.dispose();
  assert.equal(t.liveTensors(), live);
});
