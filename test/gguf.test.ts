/**
 * The GGUF writer of bench:decode's llama.cpp column (src/bench/gguf.ts): its header round-trips through this file's
 * reader and through node-llama-cpp's, Q8_0 blocks dequantize within half a step, and llama.cpp (node-llama-cpp's
 * prebuilt CPU build, through its API and through the C API with a thread pool) decodes checkpoints/llama-fixture's
 * GGUF to the same greedy tokens as the project's own decode (src/runtime/generate.ts), with the same tokenization.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { openCheckpoint } from '../src/checkpoint/checkpoint.js';
import { GGML, quantizeQ8_0, readGgufHeader, writeGguf, writeLlamaGguf, type GgufValue } from '../src/bench/gguf.js';
import { llamaUnavailable, runLlama } from '../src/bench/llamacpp.js';
import { loadModel } from '../src/model/model.js';
import { generate } from '../src/runtime/generate.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { f16ToF32Array } from '../src/util/half.js';
import { tmpDir } from './helpers.js';

const FIX = path.join(import.meta.dirname, '..', 'checkpoints', 'llama-fixture');
const TMP = tmpDir('dejavu-gguf-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
const val = (m: Map<string, GgufValue>, k: string) => m.get(k)?.v;

describe('GGUF writer', () => {
  it('round-trips every metadata type, tensor dims, types and aligned offsets through the reader', () => {
    const md: [string, GgufValue][] = [['a.u8', { t: 'u8', v: 200 }], ['a.i8', { t: 'i8', v: -5 }], ['a.u16', { t: 'u16', v: 60000 }], ['a.i16', { t: 'i16', v: -300 }],
      ['a.u32', { t: 'u32', v: 4e9 }], ['a.i32', { t: 'i32', v: -2e9 }], ['a.f32', { t: 'f32', v: 0.5 }], ['a.bool', { t: 'bool', v: true }], ['a.str', { t: 'str', v: 'héllo' }],
      ['a.u64', { t: 'u64', v: 2n ** 40n }], ['a.i64', { t: 'i64', v: -(2n ** 40n) }], ['a.f64', { t: 'f64', v: Math.PI }], ['a.arr', { t: 'arr', of: 'str', v: ['x', 'yz', ''] }],
      ['a.iarr', { t: 'arr', of: 'i32', v: [1, -2, 3] }]];
    const f = path.join(TMP, 'types.gguf');
    const data = Float32Array.from({ length: 64 * 3 }, (_, i) => i / 7);
    writeGguf(f, md, [{ name: 'x', dims: [64, 3], type: 'F32', data: () => data }, { name: 'y', dims: [64], type: 'F16', data: () => data.subarray(0, 64) },
      { name: 'z', dims: [64, 3], type: 'Q8_0', data: () => data }]);
    const h = readGgufHeader(f);
    expect(h.version).toBe(3);
    for (const [k, v] of md) expect(h.metadata.get(k), k).toEqual(v);
    expect(val(h.metadata, 'general.alignment')).toBe(32);
    expect(h.tensors.map((t) => [t.name, t.dims, t.type])).toEqual([['x', [64, 3], GGML.F32], ['y', [64], GGML.F16], ['z', [64, 3], GGML.Q8_0]]);
    expect(h.tensors.map((t) => Number(t.offset))).toEqual([0, 768, 896]); // 768 B of F32, 128 B of F16 (both multiples of 32), then Q8_0
    expect(h.dataOffset % 32).toBe(0);
    const buf = fs.readFileSync(f);
    expect(buf.length).toBe(h.dataOffset + 896 + 224); // 6 Q8_0 blocks of 34 B, padded to the alignment as llama.cpp's writer pads
    expect(new Float32Array(buf.buffer.slice(buf.byteOffset + h.dataOffset, buf.byteOffset + h.dataOffset + 768))).toEqual(data);
    // a truncated file is refused by name, not read past its end
    fs.writeFileSync(path.join(TMP, 'cut.gguf'), buf.subarray(0, buf.length - 30));
    expect(() => readGgufHeader(path.join(TMP, 'cut.gguf'))).toThrow(/tensor z runs past the end of the file/);
  });

  it('Q8_0: a float16 scale of max|x| / 127 per 32 values, each value within half a step', () => {
    const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * (i < 32 ? 1 : 0.001));
    const q = quantizeQ8_0(x), dv = new DataView(q.buffer);
    expect(q.length).toBe(68);
    for (let b = 0; b < 2; b++) {
      const d = f16ToF32Array(new Uint16Array([dv.getUint16(b * 34, true)]))[0]!;
      const amax = Math.max(...x.subarray(b * 32, b * 32 + 32).map(Math.abs));
      expect(d).toBeCloseTo(amax / 127, 3 - 3 * b);
      const qs = new Int8Array(q.buffer, b * 34 + 2, 32);
      expect(Math.max(...Array.from(qs, Math.abs))).toBe(127);
      for (let i = 0; i < 32; i++) expect(Math.abs(qs[i]! * d - x[b * 32 + i]!)).toBeLessThanOrEqual(d / 2 + amax * 1e-3);
    }
  });

  it('writes the llama fixture with llama.cpp\'s keys, q / k rows permuted per head, F16 values exact', () => {
    const f = path.join(TMP, 'fix-F16.gguf');
    writeLlamaGguf(FIX, f, 'F16');
    const h = readGgufHeader(f);
    const m = h.metadata;
    expect([val(m, 'general.architecture'), val(m, 'llama.block_count'), val(m, 'llama.embedding_length'), val(m, 'llama.feed_forward_length'),
      val(m, 'llama.attention.head_count'), val(m, 'llama.attention.head_count_kv'), val(m, 'llama.rope.dimension_count'), val(m, 'general.file_type')]).toEqual(['llama', 4, 192, 512, 6, 2, 32, 1]);
    expect(val(m, 'llama.attention.layer_norm_rms_epsilon') as number).toBeCloseTo(1e-6, 12);
    expect((val(m, 'tokenizer.ggml.tokens') as string[]).length).toBe(4096);
    expect((val(m, 'tokenizer.ggml.tokens') as string[])[1]).toBe('<s>');
    expect((val(m, 'tokenizer.ggml.merges') as string[])[0]).toBe('Ġ t');
    expect(h.tensors.length).toBe(3 + 9 * 4);
    const k = h.tensors.find((t) => t.name === 'blk.1.attn_k.weight')!;
    expect([k.dims, k.type]).toEqual([[192, 64], GGML.F16]);
    // row 2i + j of head h is HF's row j * 16 + i (head dim 32): row 1 of head 1 is HF row 32 + 16
    const buf = fs.readFileSync(f);
    const at = buf.byteOffset + h.dataOffset + Number(k.offset);
    const row = (r: number) => f16ToF32Array(new Uint16Array(buf.buffer.slice(at + r * 384, at + (r + 1) * 384)));
    const hf = openCheckpoint(FIX).read('model.layers.1.self_attn.k_proj.weight');
    for (const [r, src] of [[0, 0], [1, 16], [2, 1], [33, 48], [63, 63]] as const) expect(row(r), `row ${r}`).toEqual(hf.subarray(src * 192, (src + 1) * 192));
  });
});

const why = llamaUnavailable();
if (why) console.warn(`test/gguf.test.ts: llama.cpp tests skipped: ${why}`);
describe.skipIf(why !== null)('llama.cpp on the fixture\'s GGUF', () => {
  const PROMPT = 'The cat sat on the mat.';
  let ids: number[], ours: number[];
  const gguf = path.join(TMP, 'fix-F32.gguf');
  beforeAll(async () => {
    await ensureBackend('wasm');
    writeLlamaGguf(FIX, gguf, 'F32');
    ids = [1, ...loadTokenizer(FIX).encode(PROMPT)];
    const model = loadModel(FIX, { decode: true });
    try { ours = generate(model, [ids], { maxNewTokens: 24, stopAtEos: false }).tokens[0]!; } finally { model.dispose(); }
  });

  it('node-llama-cpp reads the header as ours does, tokenizes the prompt as our tokenizer does, and decodes the same greedy tokens', async () => {
    const { getLlama, readGgufFileInfo } = await import('node-llama-cpp');
    const info = await readGgufFileInfo(gguf);
    const h = readGgufHeader(gguf);
    expect(info.tensorInfo!.map((t) => [t.name, t.dimensions.map(Number), Number(t.offset)])).toEqual(h.tensors.map((t) => [t.name, t.dims, Number(t.offset)]));
    const md = info.metadata as unknown as { llama: { block_count: number; attention: { head_count_kv: number } }; tokenizer: { ggml: { model: string; tokens: string[] } } };
    expect([md.llama.block_count, md.llama.attention.head_count_kv, md.tokenizer.ggml.model, md.tokenizer.ggml.tokens.length]).toEqual([4, 2, 'gpt2', 4096]);
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never, progressLogs: false });
    const model = await llama.loadModel({ modelPath: gguf });
    try {
      expect([1, ...model.tokenize(PROMPT)]).toEqual(ids);
      const ctx = await model.createContext({ contextSize: 64, threads: 1, sequences: 1 });
      const out: number[] = [];
      for await (const t of ctx.getSequence().evaluate(ids as never[], { temperature: 0 })) { out.push(t as unknown as number); if (out.length === ours.length) break; }
      await ctx.dispose();
      expect(out).toEqual(ours);
      expect(model.detokenize(out as never[])).toBe(loadTokenizer(FIX).decode(ours));
    } finally { await model.dispose(); await llama.dispose(); }
  });

  it('the C API with a persistent thread pool (2 threads) decodes the same greedy tokens; node-llama-cpp\'s runner too', () => {
    expect(runLlama('capi', gguf, { threads: 2, steps: 1, prompt: ids, greedy: ours.length }).greedy).toEqual(ours);
    expect(runLlama('node', gguf, { threads: 1, steps: 1, prompt: ids, greedy: ours.length }).greedy).toEqual(ours);
    // and a timed run reports a finite rate and load time
    const r = runLlama('capi', gguf, { threads: 1, steps: 16, prompt: ids });
    expect(r.tokensPerSecond).toBeGreaterThan(0);
    expect(Number.isFinite(r.loadMs)).toBe(true);
  });
});
