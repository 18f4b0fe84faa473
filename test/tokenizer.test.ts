import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadTokenizer } from '../src/tokenizer.js';
import { FIXTURES } from './helpers.js';

describe('tokenizer', () => {
  it('reproduces the HF tokenizers probes exactly', () => {
    const dir = path.join(FIXTURES, 'opt-tiny-ref');
    const probes = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer-probes.json'), 'utf8')) as { text: string; ids: number[] }[];
    expect(probes.length).toBeGreaterThan(3);
    const tok = loadTokenizer(dir);
    for (const p of probes) expect(tok.encode(p.text), JSON.stringify(p.text)).toEqual(p.ids);
    for (const p of probes) expect(tok.decode(p.ids)).toBe(p.text);
  });
  it('missing tokenizer.json is a user error naming the folder', () => {
    expect(() => loadTokenizer(path.join(FIXTURES, 'llama-tiny-ref'))).toThrow(/no tokenizer.json in .*llama-tiny-ref/);
  });
});
