/**
 * Issue #11 case 10 (dejavu generate): reaching the model's max positions keeps what was generated (exit 0, the
 * reason on stderr); every flag goes through one schema (one error listing each bad flag, exit 2); a model whose
 * logits are not finite is an error (exit 2), never an empty completion with exit 0.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../src/checkpoint/safetensors.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const MODEL = path.join(FIXTURES, 'opt-tiny-ref'); // max_position_embeddings 128
const TMP = tmpDir('dejavu-generate-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

describe('dejavu generate', () => {
  it('a hub id or a folder with PyTorch .bin weights only gives the message collect-activations gives (exit 2), not "no tokenizer.json"', async () => {
    const bin = path.join(TMP, 'bin-only');
    fs.mkdirSync(bin, { recursive: true });
    for (const f of ['config.json', 'tokenizer.json']) fs.copyFileSync(path.join(MODEL, f), path.join(bin, f));
    fs.writeFileSync(path.join(bin, 'pytorch_model.bin'), 'x');
    for (const dir of ['facebook/opt-125m', bin]) {
      const g = await cli('generate', '--model', dir, '--prompt', 'x', '--backend', 'wasm');
      const c = await cli('collect-activations', '--model', dir, '--data', path.join(import.meta.dirname, '..', 'data', 'heldout.jsonl'), '--out', path.join(TMP, 'never'), '--backend', 'wasm');
      expect([g.code, c.code]).toEqual([2, 2]);
      const msg = (s: string) => s.split('\n').filter((l) => /^(error|hint):/.test(l)).join('\n');
      expect(msg(g.err)).toBe(msg(c.err));
      expect(msg(g.err)).toMatch(dir === bin ? /no model\.safetensors[\s\S]*\.bin checkpoints are not supported/ : /model folder facebook\/opt-125m does not exist/);
    }
    expect(fs.existsSync(path.join(TMP, 'never'))).toBe(false);
  });

  it('stops at the model\'s max positions with the text it has, says why on stderr, exits 0', async () => {
    const r = await cli('generate', '--model', MODEL, '--prompt', 'Call me Ishmael', '--max-tokens', '500', '--backend', 'wasm', '--json');
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.stopReason).toBe('max-positions');
    const promptLen = 1 + loadTokenizer(MODEL).encode('Call me Ishmael').length; // BOS + the prompt's tokens
    expect(j.promptTokens[0]).toBe(promptLen);
    expect(j.tokens[0].length).toBe(128 - promptLen); // every position used, none past the table
    expect(j.completions[0].length).toBeGreaterThan(0);
    expect(r.err).toContain(`note: stopped after ${128 - promptLen} of 500 tokens: the model has 128 positions (max_position_embeddings)`);
    expect(r.err).not.toMatch(/--seq-len/);
    // the text form prints the prompt and what was generated
    const t = await cli('generate', '--model', MODEL, '--prompt', 'Call me Ishmael', '--max-tokens', '500', '--backend', 'wasm');
    expect(t.code).toBe(0);
    expect(t.out.trim()).toBe(`Call me Ishmael${j.completions[0]}`);
  });

  it('--dtype / --threads: float32 rows of a float16 checkpoint give the same greedy tokens as its float16 rows (exact widening), q8_0 runs on 2 threads and says so; bad values are flag errors', async () => {
    const LLAMA = path.join(import.meta.dirname, '..', 'checkpoints', 'llama-fixture'); // float16 safetensors
    const run = async (...extra: string[]) => {
      const r = await cli('generate', '--model', LLAMA, '--prompt', 'Call me Ishmael', '--max-tokens', '12', '--backend', 'wasm', '--json', ...extra);
      expect(r.code, r.err).toBe(0);
      return { j: JSON.parse(r.out) as { tokens: number[][] }, err: r.err };
    };
    const f32 = await run('--dtype', 'float32'), f16 = await run('--dtype', 'auto', '--threads', '1'), q8 = await run('--dtype', 'q8_0', '--threads', '2');
    expect(f32.err).toMatch(/float32 weights, (native|wasm-simd) kernels on 1 thread\(s\)/); // the fixture is small: auto picks one thread
    expect(f16.err).toMatch(/float16 weights, (native|wasm-simd) kernels on 1 thread\(s\)/);
    expect(q8.err).toMatch(/q8_0 weights, (native|wasm-simd) kernels on 2 thread\(s\)/);
    expect(f16.j.tokens).toEqual(f32.j.tokens);
    expect(q8.j.tokens[0]!.length).toBe(12);
    const bad = await cli('generate', '--model', LLAMA, '--prompt', 'x', '--dtype', 'int4', '--threads', '0');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/^  - --dtype: /m);
    expect(bad.err).toMatch(/^  - --threads: /m);
  });

  it('a model loaded for decoding only (the CPU runtime\'s load) prefills by decode steps: the same greedy tokens as the forward-pass prefill, prompts of different lengths batched', async () => {
    const { ensureBackend } = await import('../src/backend.js');
    const { loadModel } = await import('../src/model/model.js');
    const { generate } = await import('../src/runtime/generate.js');
    await ensureBackend('wasm');
    const dir = path.join(import.meta.dirname, '..', 'checkpoints', 'llama-fixture');
    const tok = loadTokenizer(dir);
    const prompts = ['Call me Ishmael.', 'It was the best of times, it was the worst of times, it was the age of'].map((p) => [1, ...tok.encode(p)]);
    const only = loadModel(dir, { forward: false, decode: true }), full = loadModel(dir, { decode: true });
    try {
      const a = generate(only, prompts, { maxNewTokens: 16, stopAtEos: false }), b = generate(full, prompts, { maxNewTokens: 16, stopAtEos: false });
      expect(a.tokens).toEqual(b.tokens);
      expect(a.tokens.map((t) => t.length)).toEqual([16, 16]);
      expect(a.counts, 'the prefill is not counted: 15 steps of 2 rows').toEqual(b.counts);
    } finally { only.dispose(); full.dispose(); }
  });

  it('an empty prompt with a tokenizer that adds no BOS: a user error (exit 2), not a stack', async () => {
    const dir = path.join(TMP, 'no-bos');
    fs.cpSync(path.join(import.meta.dirname, '..', 'checkpoints', 'llama-fixture'), dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ add_bos_token: false }));
    const r = await cli('generate', '--model', dir, '--prompt', '', '--backend', 'wasm');
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(/prompt 1 is empty and this tokenizer adds no BOS token/);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('a prompt longer than the positions is a user error before any work', async () => {
    const r = await cli('generate', '--model', MODEL, '--prompt', 'the whale '.repeat(100), '--backend', 'wasm');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/prompt 1 has \d+ tokens; the model has 128 positions/);
    expect(r.err).not.toMatch(/\n\s+at /);
  });

  it('bad flag values: one error listing every problem by flag, exit 2', async () => {
    const r = await cli('generate', '--model', MODEL, '--prompt', 'x', '--top-k', '-5', '--seed', 'abc', '--max-tokens', '0', '--temperature', '-1');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/invalid generate flags \(4 problems\)/);
    for (const f of ['--top-k', '--seed', '--max-tokens', '--temperature']) expect(r.err).toMatch(new RegExp(`^  - ${f}: `, 'm'));
    expect(r.err).toMatch(/--seed: .*received "abc"/);
    expect(r.err).toMatch(/hint: /);
    const m = await cli('generate', '--prompt', 'x');
    expect(m.code).toBe(2);
    expect(m.err).toMatch(/--model: /);
  });

  it('NaN weights: exit 2 naming non-finite logits, not an empty completion', async () => {
    const dir = path.join(TMP, 'nan-model');
    fs.cpSync(MODEL, dir, { recursive: true });
    const f = path.join(dir, 'model.safetensors');
    const st = openSafetensors(f);
    const t: Record<string, TensorToWrite> = {};
    for (const [name, info] of st.tensors) {
      const data = readTensorF32(st, name);
      if (name.endsWith('layers.1.fc2.weight')) data.fill(NaN);
      t[name] = { dtype: 'F32', shape: info.shape, data };
    }
    fs.chmodSync(f, 0o644);
    writeSafetensors(f, t, { format: 'pt' });
    const r = await cli('generate', '--model', dir, '--prompt', 'Call me', '--max-tokens', '5', '--backend', 'wasm');
    expect(r.code, r.out + r.err).toBe(2);
    expect(r.err).toMatch(/non-finite logits/);
    expect(r.err).toMatch(/hint: /);
    expect(r.out).toBe('');
  });

  it('issue #11 case 9: an invalid tokenizer_config.json is a user error naming the file (exit 2), not a stack', async () => {
    for (const [what, text, re] of [
      ['not JSON', '{"model_max_length": 2048,', /tokenizer_config\.json is not valid JSON/],
      ['not an object', '[1, 2]', /tokenizer_config\.json is not a tokenizer config: \(top level\): /],
      ['wrong field type', '{"bos_token": 5}', /tokenizer_config\.json is not a tokenizer config: bos_token: /],
    ] as const) {
      const dir = path.join(TMP, `tokcfg-${what.replace(/\W+/g, '-')}`);
      fs.cpSync(MODEL, dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), text);
      const r = await cli('generate', '--model', dir, '--prompt', 'Call me', '--max-tokens', '2', '--backend', 'wasm');
      expect(r.code, `${what}: ${r.err}`).toBe(2);
      expect(r.err, what).toMatch(re);
      expect(r.err, what).toContain(path.join(dir, 'tokenizer_config.json'));
      expect(r.err, what).toMatch(/hint: /);
      expect(r.err, what).not.toMatch(/\n\s+at /);
    }
  });
});
