/**
 * Issue 22: the calibration of the input-threshold / gate-threshold sites (streaming histograms of the runtime's own
 * site inputs) reproduces PyTorch's uniform rows on the Llama fixture (test/fixtures/sparsity), within 0.3 points of
 * perplexity increase (llama-unseen: sparsity-calibration-unseen.test.ts); the histogram's quantiles match exact ones.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { LogHistogram } from '../src/runtime/calibrate.js';
import { checkAgainst, ROOT, type Reference } from './sparsity-calibration-check.js';

const MODEL = path.join(ROOT, 'checkpoints/llama-fixture');
const REF = JSON.parse(fs.readFileSync(path.join(ROOT, 'test/fixtures/sparsity/sparsity-llama-fixture.json'), 'utf8')) as Reference;

beforeAll(async () => { await ensureBackend('wasm'); });

describe('site calibration', () => {
  it('the streaming histogram\'s quantiles are within 2% of exact ones (zeros counted apart)', () => {
    let s = 9;
    const r = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
    const xs = Array.from({ length: 20000 }, (_, i) => (i % 10 === 0 ? 0 : Math.abs(Math.log(r() + 1e-9)) * (i % 3 === 0 ? 0.01 : 1)));
    const h = new LogHistogram();
    for (const x of xs) h.add(x);
    const sorted = [...xs].sort((a, b) => a - b);
    expect(h.quantile(0.05)).toBe(0); // a tenth are zeros
    for (const q of [0.2, 0.4, 0.5, 0.7, 0.9]) {
      const exact = sorted[Math.floor(q * xs.length)]!;
      expect(Math.abs(h.quantile(q) / exact - 1)).toBeLessThan(0.02);
    }
    expect(() => h.add(NaN)).toThrow(/not a finite/);
  });

  it('reproduces the PyTorch reference\'s uniform rows on the Llama fixture within 0.3 points of perplexity increase', async () => {
    await checkAgainst(MODEL, REF, [['down-in', 0.4], ['teal-all', 0.25], ['cats', 0.4]]);
  }, 600_000);

});
