/**
 * BOS as transformers adds it (add_special_tokens): from tokenizer.json's template or tokenizer_config.json's
 * add_bos_token; none where the tokenizer adds none (SmolLM2: a ByteLevel post-processor, no template), whatever
 * config.json's bos_token_id says; a bare tokenizer.json that says nothing leaves it to config.json. And EOS for
 * generate from generation_config.json (one id or a list) as well as config.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend, loadModel, loadTokenizer } from '../src/index.js';
import { eosIds } from '../src/runtime/generate.js';
import { packSequences } from '../src/activations/data.js';
import { FIXTURES, tmpDir } from './helpers.js';

const TOK = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'opt-tiny-ref', 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
const template = (bos: string, id: number) => ({ type: 'TemplateProcessing', single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
  pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }], special_tokens: { [bos]: { id: bos, ids: [id], tokens: [bos] } } });

function folder(tok: Record<string, unknown>, cfg?: Record<string, unknown>): string {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
  if (cfg) fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  return dir;
}

beforeAll(async () => { await ensureBackend('wasm'); });

describe('tokenizer BOS as transformers adds it', () => {
  it('a template that prepends <s> (Llama, Gemma): its id', () => {
    expect(loadTokenizer(folder({ ...TOK, post_processor: template('<s>', 0) })).bos).toBe(0);
  });
  it('a ByteLevel post-processor without a template (SmolLM2): no BOS', () => {
    expect(loadTokenizer(folder({ ...TOK, post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true } })).bos).toBeNull();
  });
  it('tokenizer_config.json: add_bos_token false wins over a template; true adds bos_token', () => {
    expect(loadTokenizer(folder({ ...TOK, post_processor: template('<s>', 0) }, { add_bos_token: false })).bos).toBeNull();
    expect(loadTokenizer(folder(TOK, { add_bos_token: true, bos_token: '</s>' })).bos).toBe(2);
    expect(loadTokenizer(folder(TOK, { eos_token: '</s>' })).bos).toBeNull(); // a config that adds none
  });
  it('a bare tokenizer.json (no post-processor, no tokenizer_config.json) says nothing: config.json decides', () => {
    expect(loadTokenizer(folder(TOK)).bos).toBeUndefined();
  });

  it('packed text documents get the tokenizer\'s BOS, or none', async () => {
    const model = loadModel(path.join(FIXTURES, 'opt-tiny-ref'));
    try {
      const pack = async (dir: string) => {
        const docs = (async function* () { yield { text: 'hello world' }; })();
        const out: number[][] = [];
        for await (const s of packSequences(docs, { seqLen: 3, cfg: model.config, tokenizer: loadTokenizer(dir), source: 't' })) out.push(s);
        return out[0]!;
      };
      const plain = loadTokenizer(folder(TOK)).encode('hello world');
      expect(model.config.bosTokenId).toBe(2);
      expect(await pack(folder({ ...TOK, post_processor: template('<s>', 0) }))).toEqual([0, ...plain.slice(0, 2)]);
      expect(await pack(folder({ ...TOK, post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true } }))).toEqual(plain.slice(0, 3));
      expect(await pack(folder(TOK))).toEqual([2, ...plain.slice(0, 2)]);
    } finally { model.dispose(); }
  });
});

describe('EOS for generate', () => {
  it('generation_config.json eos_token_id (a list) joins config.json\'s', () => {
    const src = path.join(FIXTURES, 'families', 'qwen2-ref');
    const dir = tmpDir();
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    const model = loadModel(dir);
    try {
      expect(eosIds(model)).toEqual([2]);
      fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [7, 9] }));
      expect(eosIds(model)).toEqual([2, 7, 9]);
    } finally { model.dispose(); }
  });
});
