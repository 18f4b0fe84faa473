/**
 * Issue #11 case 6: a single long document (a 10 MB .txt, or one long JSONL line) streams through tokenization and
 * packing in linear time: no `Maximum call stack size exceeded`, no quadratic slicing, and --max-tokens stops the
 * tokenizer early. Long text is tokenized in chunks split before a whitespace character that sits between two
 * non-whitespace ones; for byte-level BPE that gives exactly the ids of the whole text (checked here).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { packSequences, readDocuments, type Doc } from '../src/activations/data.js';
import { normalizeConfig } from '../src/model/config.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-longdoc-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
const cfg = normalizeConfig(JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8')), MODEL);

/** deterministic prose with spaces, punctuation, newlines, runs of spaces and tabs */
function prose(chars: number): string {
  const words = 'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,\nand nothing particular to interest me on shore,  I thought I would sail about a little\tand see the watery part of the world.'.split(' ');
  const parts: string[] = [];
  let n = 0, i = 0;
  while (n < chars) { const w = words[i++ % words.length]!; parts.push(w); n += w.length + 1; }
  return parts.join(' ').slice(0, chars);
}

async function all(docs: AsyncIterable<Doc>, seqLen: number, maxTokens?: number): Promise<number[][]> {
  const out: number[][] = [];
  for await (const s of packSequences(docs, { seqLen, cfg, tokenizer: loadTokenizer(MODEL), maxTokens, source: 'test' })) out.push(s);
  return out;
}
async function* one(d: Doc): AsyncGenerator<Doc> { yield d; }

describe('long documents', () => {
  it('collect-activations on a 10 MB .txt with --max-tokens: exit 0 in seconds (was: RangeError, exit 1)', async () => {
    const f = path.join(TMP, 'book.txt');
    fs.writeFileSync(f, prose(10 * 2 ** 20));
    const t = performance.now();
    const r = await cli('collect-activations', '--model', MODEL, '--data', f, '--out', path.join(TMP, 'acts'), '--seq-len', '64', '--max-tokens', '1024', '--backend', 'wasm', '--quiet');
    const s = (performance.now() - t) / 1000;
    expect(r.code, r.err).toBe(0);
    expect(r.err).not.toMatch(/call stack/);
    expect(JSON.parse(fs.readFileSync(path.join(TMP, 'acts', 'manifest.json'), 'utf8')).tokens).toBe(1024);
    expect(s, `${s.toFixed(1)} s`).toBeLessThan(8); // tokenizing all 10 MB first takes ~10 s on its own
  });

  it('chunked tokenization of one long text gives exactly the ids of the whole text', async () => {
    const text = prose(600_000);
    const tok = loadTokenizer(MODEL);
    const whole = [cfg.bosTokenId!, ...tok.encode(text)];
    const seqs = await all(one({ text }), 100);
    expect(seqs.length).toBe(Math.floor(whole.length / 100));
    expect(seqs.flat()).toEqual(whole.slice(0, seqs.length * 100));
  });

  it('packing a whole 10 MB document is linear: all ~10M tokens in seconds (a one-id-per-character tokenizer isolates the packing)', async () => {
    const text = prose(10 * 2 ** 20);
    let calls = 0;
    const charTok = { encode: (s: string) => { calls++; return Array.from({ length: s.length }, (_, i) => s.charCodeAt(i) % cfg.vocabSize); }, decode: () => '', vocabSize: cfg.vocabSize, hash: '', chunkSafe: true };
    const t = performance.now();
    let n = 0, last: number[] = [];
    for await (const s of packSequences(one({ text }), { seqLen: 256, cfg, tokenizer: charTok, source: 'test' })) { n++; last = s; }
    const ms = performance.now() - t;
    expect(n).toBe(Math.floor((text.length + 1) / 256));
    expect(last).toEqual(Array.from((String.fromCharCode(cfg.bosTokenId!) + text).slice((n - 1) * 256, n * 256), (c) => c.charCodeAt(0) % cfg.vocabSize));
    expect(calls).toBeGreaterThan(100); // tokenized in pieces, not in one call
    expect(ms, `${ms.toFixed(0)} ms`).toBeLessThan(10_000); // before: RangeError at push(...ids); then one O(n) slice per sequence
  });

  it('one JSONL line of 2M pre-tokenized ids packs in linear time', async () => {
    const n = 2_000_000;
    const ids = Array.from({ length: n }, (_, i) => (i * 7) % cfg.vocabSize);
    const f = path.join(TMP, 'long.jsonl');
    fs.writeFileSync(f, JSON.stringify({ ids }) + '\n');
    const t = performance.now();
    const seqs = await all(readDocuments(f), 256);
    const ms = performance.now() - t;
    expect(seqs.length).toBe(Math.floor(n / 256));
    expect(seqs[seqs.length - 1]).toEqual(ids.slice((seqs.length - 1) * 256, seqs.length * 256));
    expect(ms, `${ms.toFixed(0)} ms`).toBeLessThan(5000);
  });

  it('one JSONL line holding a long text, followed by a short one', async () => {
    const f = path.join(TMP, 'longtext.jsonl');
    const long = prose(300_000), short = 'the whale';
    fs.writeFileSync(f, JSON.stringify({ text: long }) + '\n' + JSON.stringify({ text: short }) + '\n');
    const tok = loadTokenizer(MODEL);
    const want = [cfg.bosTokenId!, ...tok.encode(long), cfg.bosTokenId!, ...tok.encode(short)];
    const seqs = await all(readDocuments(f), 64);
    expect(seqs.flat()).toEqual(want.slice(0, Math.floor(want.length / 64) * 64));
  });
});
