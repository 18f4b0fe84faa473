/**
 * The check shared by test/sparsity-calibration*.test.ts (two files, so that vitest runs the two models' decodes on
 * two workers: together they were the suite's longest file, ~260 s of CI's 554).
 */
import * as path from 'node:path';
import { expect } from 'vitest';
import { loadModel } from '../src/model/model.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { packSequences, readDocuments } from '../src/activations/data.js';
import { denseModes, inputMajorNames, type DecodeModes, type InputSite } from '../src/runtime/decoder.js';
import { calibrateSites, thresholdAt } from '../src/runtime/calibrate.js';
import { decodeNll } from '../src/runtime/generate.js';

export const ROOT = path.resolve(import.meta.dirname, '..');
export interface Run { method: string; s: number; vs_dense: number; bytes_skipped: number }
export interface Reference { dense: number; runs: Run[] }

/**
 * dejavu's calibration (32 x 256 tokens of data/calibration.jsonl) and runtime (64 x 256 held-out tokens) against a
 * PyTorch reference's rows: perplexity increase within 0.3 points, weights read within 3 points of the share skipped,
 * and (given) each layer's and site's thresholds within 2% (histogram quantiles vs torch.quantile)
 */
export async function checkAgainst(dir: string, ref: Reference, rows: [string, number][], thresholds?: Record<string, Record<string, number>>[]): Promise<void> {
  const seen: string[] = [];
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
      seen.push(`${method} s ${s}: +${(100 * (r.ppl / dense - 1)).toFixed(3)}% (reference +${(100 * want.vs_dense).toFixed(3)}%), weights read ${(100 * r.read).toFixed(1)}%`);
      expect(Math.abs(r.ppl / dense - 1 - want.vs_dense), `${method} s ${s}: +${(100 * (r.ppl / dense - 1)).toFixed(2)}% vs the reference's +${(100 * want.vs_dense).toFixed(2)}%`).toBeLessThan(0.003);
      // the runtime read what the reference skipped (held-out text: within 3 points of the calibrated share)
      expect(Math.abs(1 - r.read - want.bytes_skipped), `${method} s ${s}: read ${r.read}`).toBeLessThan(0.03);
    }
    console.info(`${path.basename(dir)}, dense ${dense.toFixed(3)}:\n  ${seen.join('\n  ')}`); // the figures docs/independent-check-swiglu.md quotes
  } finally { model.dispose(); rowMajor.dispose(); }
}
