// Small statistics shared by the benchmarks.

/** Median (mean of the two middle values for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** v rounded to `digits` decimals, as a number (for JSON output). */
export const round = (v: number, digits: number): number => Number(v.toFixed(digits));
