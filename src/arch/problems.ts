/** config.json problems, collected so that every one is reported at once (src/arch/registry.ts throws them). */
export type Raw = Record<string, unknown>;

export class Problems {
  list: string[] = [];
  push(s: string): void { this.list.push(s); }
  num(raw: Raw, key: string, opts: { int?: boolean; min?: number; dflt?: number } = {}): number {
    const v = raw[key] ?? opts.dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || (opts.int && !Number.isInteger(v)) || (opts.min !== undefined && v < opts.min)) {
      this.list.push(`${key}: expected ${opts.int ? 'an integer' : 'a number'}${opts.min !== undefined ? ` >= ${opts.min}` : ''}, got ${JSON.stringify(v)}`);
      return NaN;
    }
    return v;
  }
  /** the first of `keys` present (aliases of one setting), read as num() */
  numOf(raw: Raw, keys: string[], opts: { int?: boolean; min?: number; dflt?: number } = {}): number {
    const k = keys.find((x) => raw[x] !== undefined && raw[x] !== null) ?? keys[0]!;
    return this.num(raw, k, opts);
  }
  /** `key` must be absent, null, or one of `ok` (the values under which HF computes what we compute) */
  only(raw: Raw, key: string, ok: unknown[], what: string): void {
    const v = raw[key];
    if (v === undefined || v === null || ok.some((o) => o === v)) return;
    this.list.push(`${key}: ${JSON.stringify(v)} is not supported (${what})`);
  }
}
