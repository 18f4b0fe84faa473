/**
 * Issue 22: the calibration of the input-threshold / gate-threshold sites (streaming histograms of the runtime's own
 * site inputs) reproduces PyTorch's uniform rows on the Llama fixture (test/fixtures/sparsity), within 0.3 points of
 * perplexity increase, and on checkpoints/llama-unseen (docs/independent-check-swiglu.md) too; the histogram's
 * quantiles match exact ones.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel } from '../src/model/model.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { packSequences, readDocuments } from '../src/activations/data.js';
import { denseModes, inputMajorNames, type DecodeModes, type InputSite } from '../src/runtime/decoder.js';
import { calibrateSites, LogHistogram, thresholdAt } from '../src/runtime/calibrate.js';
import { decodeNll } from '../src/runtime/generate.js';

const ROOT = path.resolve(__dirname, '..');
const MODEL = path.join(ROOT, 'checkpoints/llama-fixture');
interface Run { method: string; s: number; vs_dense: number; bytes_skipped: number }
const REF = JSON.parse(fs.readFileSync(path.join(ROOT, 'test/fixtures/sparsity/sparsity-llama-fixture.json'), 'utf8')) as { dense: number; runs: Run[] };

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

  it('and on llama-unseen (a SwiGLU model trained for this check: docs/independent-check-swiglu.md), its thresholds too', async () => {
    const ref = JSON.parse(fs.readFileSync(path.join(ROOT, 'docs/independent-check-swiglu.json'), 'utf8')) as typeof REF & { thresholds: Record<string, Record<string, number>>[] };
    await checkAgainst(path.join(ROOT, 'checkpoints/llama-unseen'), ref, [['down-in', 0.4], ['teal-all', 0.25], ['teal-attn', 0.3], ['cats', 0.4]], ref.thresholds);
  }, 1_200_000); // five 16k-token decodes of a d 256 model: 12 min were not enough at load 10 on 2 cores
});

/**
 * dejavu's calibration (32 x 256 tokens of data/calibration.jsonl) and runtime (64 x 256 held-out tokens) against a
 * PyTorch reference's rows: perplexity increase within 0.3 points, weights read within 3 points of the share skipped,
 * and (given) each layer's and site's thresholds within 2% (histogram quantiles vs torch.quantile)
 */
async function checkAgainst(dir: string, ref: typeof REF, rows: [string, number][], thresholds?: Record<string, Record<string, number>>[]): Promise<void> {
  const probe = loadModel(dir, {});
  const c = probe.config;
  probe.dispose();
  // input sites need their matrices input-major; CATS reads up's rows of the kept neurons (row-major up)
  const model = loadModel(dir, { decode: { inputMajor: inputMajorNames({ inputs: Array.from({ length: c.layers }, () => ({ attn: { t: 0 }, mlp: { t: 0 } })) }, c.gated) } });
  const rowMajor = loadModel(dir, { decode: true });
  try {
    const tok = loadTokenizer(dir);
    const seqs = async (f: string, n: number) => {
      const o: number[][] = [];
      for await (const q of packSequences(readDocuments(path.join(ROOT, f)), { seqLen: 256, cfg: c, tokenizer: tok, maxTokens: n * 256, source: f })) o.push(q);
      return o;
    };
    const cal = calibrateSites(model, await seqs('data/calibration.jsonl', 32));
    expect(cal.tokens).toBe(32 * 256);
    for (const [i, l] of (thresholds ?? []).entries()) for (const [site, byS] of Object.entries(l)) for (const [s, t] of Object.entries(byS))
      expect(Math.abs(thresholdAt(cal, i, site as InputSite | 'gate', Number(s)) / t - 1), `layer ${i} ${site} s ${s}`).toBeLessThan(0.02);
    const held = await seqs('data/heldout.jsonl', 64);
    const ppl = (m: DecodeModes, on = model) => { const r = decodeNll(on, held, m); return { ppl: Math.exp(r.nll / r.count), read: r.weights.weightsRead / r.weights.weightsTotal }; };
    const dense = ppl(denseModes(c.layers)).ppl;
    expect(Math.abs(dense / ref.dense - 1)).toBeLessThan(1e-4);
    const SITES: Record<string, InputSite[]> = { 'teal-all': ['attn', 'o', 'mlp', 'down'], 'teal-attn': ['attn', 'o'], 'down-in': ['down'] };
    for (const [method, s] of rows) {
      const want = ref.runs.find((r) => r.method === method && r.s === s)!;
      const m = denseModes(c.layers);
      if (method === 'cats') m.mlp = m.mlp.map((_, i) => ({ mode: 'gate-threshold' as const, t: thresholdAt(cal, i, 'gate', s) }));
      else m.inputs = m.mlp.map((_, i) => Object.fromEntries(SITES[method]!.map((site) => [site, { t: thresholdAt(cal, i, site, s) }])));
      const r = ppl(m, method === 'cats' ? rowMajor : model);
      expect(Math.abs(r.ppl / dense - 1 - want.vs_dense), `${method} s ${s}: +${(100 * (r.ppl / dense - 1)).toFixed(2)}% vs the reference's +${(100 * want.vs_dense).toFixed(2)}%`).toBeLessThan(0.003);
      // the runtime read what the reference skipped (held-out text: within 3 points of the calibrated share)
      expect(Math.abs(1 - r.read - want.bytes_skipped), `${method} s ${s}: read ${r.read}`).toBeLessThan(0.03);
    }
  } finally { model.dispose(); rowMajor.dispose(); }
}
