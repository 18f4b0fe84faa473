/** The middle value of xs (of an even count, the upper of the two middle ones), xs left as it was. */
export function median(xs: readonly number[]): number {
  if (!xs.length) throw new Error('median of no values');
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}
