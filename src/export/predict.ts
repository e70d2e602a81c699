// Logits → the top classes with their softmax probabilities.

export interface Prediction {
  index: number;
  label: string;
  probability: number;
}

/** Softmax of one row of logits, computed in float64 with the max subtracted. */
export function softmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += out[i] = Math.exp(logits[i]! - max);
  for (let i = 0; i < out.length; i++) out[i]! /= sum;
  return out;
}

/** The k most probable classes of one row of logits, most probable first. */
export function topK(logits: ArrayLike<number>, classes: readonly string[], k = 5): Prediction[] {
  if (classes.length !== logits.length) throw new Error(`the model gives ${logits.length} scores but names ${classes.length} classes`);
  for (let i = 0; i < logits.length; i++) {
    // A NaN score would print "NaN%": the weights or the input normalisation are broken.
    if (!Number.isFinite(logits[i]!))
      throw new Error(
        `the model's score for class ${i} ('${classes[i]}') is ${logits[i]}: its weights or its input normalisation are broken (NaN or infinite values)`,
      );
  }
  const p = softmax(logits);
  return Array.from(p, (probability, index) => ({ index, label: classes[index]!, probability }))
    .sort((a, b) => b.probability - a.probability || a.index - b.index)
    .slice(0, Math.min(k, p.length));
}
