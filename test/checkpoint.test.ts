/**
 * Checkpoint folders and the weight map: every way a folder can be wrong is a UserError that says what is wrong,
 * and the accepted key dialects (bare-model keys without `model.`, ignorable extras) load to the same model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { openCheckpoint } from '../src/checkpoint/checkpoint.js';
import { openSafetensors, readTensorF32, writeSafetensors, type TensorToWrite } from '../src/checkpoint/safetensors.js';
import { loadModel } from '../src/model/model.js';
import { disposeOutput, forward } from '../src/model/forward.js';
import { UserError } from '../src/util/errors.js';
import { tmpDir } from './helpers.js';
import { makeRandomCheckpoint, type RandomCkptOptions } from './reference/random-checkpoint.js';

const ROOT = tmpDir('dejavu-checkpoint-');
beforeAll(async () => { await ensureBackend('wasm'); });
afterAll(() => fs.rmSync(ROOT, { recursive: true, force: true }));

let n = 0;
function make(opts: RandomCkptOptions): string {
  const dir = path.join(ROOT, `ck-${n++}`);
  makeRandomCheckpoint(dir, { layers: 2, hidden: 16, heads: 2, vocab: 32, maxPos: 32, ...opts });
  return dir;
}

type Tensors = Map<string, TensorToWrite>;
function readAll(file: string): Tensors {
  const st = openSafetensors(file);
  const out: Tensors = new Map();
  for (const [k, info] of st.tensors) out.set(k, { dtype: 'F32', shape: [...info.shape], data: readTensorF32(st, k) });
  return out;
}
/** rewrite model.safetensors through `edit` */
function tamper(dir: string, edit: (t: Tensors) => Tensors | void): void {
  const file = path.join(dir, 'model.safetensors');
  const t = readAll(file);
  const r = edit(t) ?? t;
  writeSafetensors(file, Object.fromEntries(r));
}
function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const f = path.join(dir, 'config.json');
  const c = JSON.parse(fs.readFileSync(f, 'utf8'));
  edit(c);
  fs.writeFileSync(f, JSON.stringify(c));
}

/** loadModel(dir) throws a UserError; returns it */
function loadError(dir: string): UserError {
  const before = tf.memory().numTensors;
  let err: unknown;
  try { loadModel(dir).dispose(); } catch (e) { err = e; }
  expect(err, 'loadModel should throw').toBeInstanceOf(UserError);
  expect(tf.memory().numTensors, 'no tensors left behind').toBe(before);
  return err as UserError;
}

function logitsOf(dir: string, ids: number[]): Float32Array {
  const m = loadModel(dir);
  const out = forward(m, [ids]);
  const l = out.logits!.dataSync() as Float32Array;
  disposeOutput(out);
  m.dispose();
  return l;
}

describe('loadModel: weight errors name the key and the shapes', () => {
  it('missing weight: the key and its expected shape', () => {
    const dir = make({ family: 'opt', ffn: 24 });
    tamper(dir, (t) => { t.delete('model.decoder.layers.1.fc1.bias'); });
    const e = loadError(dir);
    expect(e.message).toContain('missing weight "model.decoder.layers.1.fc1.bias" (expected shape [24])');
    expect(e.message).toContain(dir);
  });

  it('missing lm_head for an untied Llama', () => {
    const dir = make({ family: 'llama', tied: false });
    tamper(dir, (t) => { t.delete('lm_head.weight'); });
    expect(loadError(dir).message).toContain('missing weight "lm_head.weight" (expected shape [32,16])');
  });

  it('unexpected weight: named', () => {
    const dir = make({ family: 'llama' });
    tamper(dir, (t) => { t.set('model.layers.0.mlp.extra_proj.weight', { dtype: 'F32', shape: [2, 2], data: [1, 2, 3, 4] }); });
    const e = loadError(dir);
    expect(e.message).toContain('unexpected weight "model.layers.0.mlp.extra_proj.weight" [2,2]');
  });

  it('a layer beyond num_hidden_layers is unexpected', () => {
    const dir = make({ family: 'opt' });
    editConfig(dir, (c) => { c.num_hidden_layers = 1; });
    const e = loadError(dir);
    expect(e.message).toMatch(/unexpected weight "model\.decoder\.layers\.1\.fc1\.weight"/);
    expect(e.message).not.toMatch(/layers\.0\./);
  });

  it('mis-shaped weight: the key and both shapes', () => {
    const dir = make({ family: 'opt', ffn: 24 });
    tamper(dir, (t) => { t.set('model.decoder.layers.0.fc1.weight', { dtype: 'F32', shape: [16, 24], data: new Float32Array(384) }); });
    const e = loadError(dir);
    expect(e.message).toContain('weight "model.decoder.layers.0.fc1.weight" has shape [16,24], expected [24,16]');
  });

  it('a config that disagrees with every layer (GQA heads) lists each problem in one error', () => {
    const dir = make({ family: 'llama', heads: 4, kvHeads: 2 });
    editConfig(dir, (c) => { c.num_key_value_heads = 4; });
    const e = loadError(dir);
    for (const l of [0, 1]) for (const p of ['k_proj', 'v_proj'])
      expect(e.message).toContain(`weight "model.layers.${l}.self_attn.${p}.weight" has shape [8,16], expected [16,16]`);
    expect(e.hint).toMatch(/config\.json/);
  });

  it('missing and unexpected together: both in one message', () => {
    const dir = make({ family: 'opt' });
    tamper(dir, (t) => {
      const w = t.get('model.decoder.layers.0.fc2.weight')!;
      t.delete('model.decoder.layers.0.fc2.weight');
      t.set('model.decoder.layers.0.fc_2.weight', w);
    });
    const e = loadError(dir);
    expect(e.message).toContain('missing weight "model.decoder.layers.0.fc2.weight"');
    expect(e.message).toContain('unexpected weight "model.decoder.layers.0.fc_2.weight"');
  });
});

describe('loadModel: folder and config errors', () => {
  it('unsupported model_type', () => {
    const dir = make({ family: 'opt' });
    editConfig(dir, (c) => { c.model_type = 'mamba'; });
    const e = loadError(dir);
    expect(e.message).toMatch(/unsupported model_type "mamba"/);
    expect(e.message).toContain(path.join(dir, 'config.json'));
    expect(e.hint).toMatch(/opt.*llama.*gpt2/);
  });

  it('unsupported config values are all listed', () => {
    const dir = make({ family: 'opt' });
    editConfig(dir, (c) => { c.activation_function = 'quick_gelu'; c.ffn_dim = -3; });
    const e = loadError(dir);
    expect(e.message).toMatch(/activation_function: activation "quick_gelu" is not supported/);
    expect(e.message).toMatch(/ffn_dim: expected an integer >= 1, got -3/);
  });

  it('missing config.json', () => {
    const dir = make({ family: 'opt' });
    fs.rmSync(path.join(dir, 'config.json'));
    const e = loadError(dir);
    expect(e.message).toContain(path.join(dir, 'config.json'));
    expect(e.message).toMatch(/cannot read config/);
  });

  it('config.json that is not JSON', () => {
    const dir = make({ family: 'opt' });
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": ');
    expect(loadError(dir).message).toMatch(/not valid JSON/);
  });

  it('model folder that does not exist', () => {
    const e = loadError(path.join(ROOT, 'nope'));
    expect(e.message).toMatch(/does not exist/);
  });

  it('sharded index pointing at a missing shard', () => {
    const dir = make({ family: 'llama', shardCount: 3 });
    expect(() => loadModel(dir).dispose()).not.toThrow();
    fs.rmSync(path.join(dir, 'model-00002-of-00003.safetensors'));
    const e = loadError(dir);
    expect(e.message).toContain('shard model-00002-of-00003.safetensors');
    expect(e.message).toContain('missing');
  });

  it('sharded index mapping a tensor to a file that is not there', () => {
    const dir = make({ family: 'opt', shardCount: 2 });
    const idxFile = path.join(dir, 'model.safetensors.index.json');
    const idx = JSON.parse(fs.readFileSync(idxFile, 'utf8'));
    idx.weight_map['model.decoder.layers.0.fc1.weight'] = 'model-00009-of-00009.safetensors';
    fs.writeFileSync(idxFile, JSON.stringify(idx));
    expect(loadError(dir).message).toMatch(/model-00009-of-00009\.safetensors.*missing/);
  });

  it('sharded index that disagrees with the shards', () => {
    const dir = make({ family: 'opt', shardCount: 2 });
    const idxFile = path.join(dir, 'model.safetensors.index.json');
    const idx = JSON.parse(fs.readFileSync(idxFile, 'utf8'));
    const files = [...new Set(Object.values(idx.weight_map as Record<string, string>))].sort();
    const key = Object.keys(idx.weight_map).find((k) => idx.weight_map[k] === files[0])!;
    idx.weight_map[key] = files[1];
    fs.writeFileSync(idxFile, JSON.stringify(idx));
    expect(loadError(dir).message).toContain(`tensor "${key}" is in ${files[0]} but the index maps it to ${files[1]}`);
    // an index entry for a tensor that no shard holds
    idx.weight_map[key] = files[0];
    idx.weight_map['model.decoder.ghost.weight'] = files[0];
    fs.writeFileSync(idxFile, JSON.stringify(idx));
    expect(loadError(dir).message).toMatch(/"model\.decoder\.ghost\.weight" is listed in the index but missing/);
  });

  it('a shard name with a path is refused', () => {
    const dir = make({ family: 'opt', shardCount: 2 });
    const idxFile = path.join(dir, 'model.safetensors.index.json');
    const idx = JSON.parse(fs.readFileSync(idxFile, 'utf8'));
    for (const k of Object.keys(idx.weight_map)) idx.weight_map[k] = '../' + idx.weight_map[k];
    fs.writeFileSync(idxFile, JSON.stringify(idx));
    expect(loadError(dir).message).toMatch(/must be a plain file name/);
  });

  it('a .bin-only folder: no safetensors, and the hint says how to convert', () => {
    const dir = make({ family: 'opt' });
    fs.rmSync(path.join(dir, 'model.safetensors'));
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), Buffer.alloc(64));
    const e = loadError(dir);
    expect(e.message).toMatch(/no model\.safetensors or model\.safetensors\.index\.json/);
    expect(e.message).toContain(dir);
    expect(e.hint).toMatch(/\.bin checkpoints are not supported.*safe_serialization=True/);
  });

  it('a corrupt weight file: the safetensors error names it', () => {
    const dir = make({ family: 'opt' });
    const f = path.join(dir, 'model.safetensors');
    fs.truncateSync(f, fs.statSync(f).size - 3);
    const e = loadError(dir);
    expect(e.message).toContain(f);
    expect(e.message).toMatch(/invalid safetensors file/);
  });
});

describe('loadModel: accepted key dialects', () => {
  const ids = [3, 9, 4, 17, 5, 30, 2];

  it('OPT keys without the `model.` prefix (decoder.layers.0...) load to the same model', () => {
    const dir = make({ family: 'opt', seed: 5 });
    const want = logitsOf(dir, ids);
    tamper(dir, (t) => new Map([...t].map(([k, v]) => [k.replace(/^model\./, ''), v])));
    const keys = [...openCheckpoint(dir).tensors.keys()];
    expect(keys.some((k) => k.startsWith('decoder.layers.0.'))).toBe(true);
    expect(keys.some((k) => k.startsWith('model.'))).toBe(false);
    expect(Array.from(logitsOf(dir, ids))).toEqual(Array.from(want));
  });

  it('Llama keys without the `model.` prefix (layers.N, embed_tokens, norm) load to the same model', () => {
    const dir = make({ family: 'llama', tied: false, seed: 6 });
    const want = logitsOf(dir, ids);
    tamper(dir, (t) => new Map([...t].map(([k, v]) => [k.replace(/^model\./, ''), v])));
    expect(openCheckpoint(dir).tensors.has('embed_tokens.weight')).toBe(true);
    expect(Array.from(logitsOf(dir, ids))).toEqual(Array.from(want));
  });

  it('rotary_emb.inv_freq buffers and a saved lm_head of a tied model are ignored', () => {
    const dir = make({ family: 'llama', tied: true, seed: 7 });
    const want = logitsOf(dir, ids);
    tamper(dir, (t) => {
      t.set('model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'F32', shape: [4], data: [1, 0.1, 0.01, 0.001] });
      const e = t.get('model.embed_tokens.weight')!;
      t.set('lm_head.weight', { ...e, data: new Float32Array(e.data.length).fill(9) }); // must not be used: tied
    });
    expect(Array.from(logitsOf(dir, ids))).toEqual(Array.from(want));
  });

  it('the weights are the checkpoint values (not just the right shapes)', () => {
    const dir = make({ family: 'opt', tied: false, seed: 8 });
    const m = loadModel(dir);
    const ck = openCheckpoint(dir);
    try {
      expect(Array.from(m.embed.dataSync())).toEqual(Array.from(ck.read('model.decoder.embed_tokens.weight')));
      // lm_head is stored as [in, out]: transposed HF [V, d]
      const hf = ck.read('lm_head.weight');
      const ours = m.lmHead.dataSync();
      const [d, V] = m.lmHead.shape;
      expect(V).toBe(32);
      for (let v = 0; v < V; v++) for (let i = 0; i < d; i++) if (ours[i * V + v] !== hf[v * d + i]) expect(ours[i * V + v]).toBe(hf[v * d + i]);
      const { w, release } = m.layer(1);
      const fc1 = ck.read('model.decoder.layers.1.fc1.weight'); // [F, d]
      const F = m.config.ffn;
      expect(w.up.shape).toEqual([16, F]);
      const w1 = w.up.dataSync();
      for (let f = 0; f < F; f++) for (let i = 0; i < 16; i++) if (w1[i * F + f] !== fc1[f * 16 + i]) expect(w1[i * F + f]).toBe(fc1[f * 16 + i]);
      release();
    } finally { m.dispose(); }
  });
});
