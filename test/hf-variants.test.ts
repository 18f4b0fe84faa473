/**
 * Hugging Face variants exported by transformers (test/fixtures/hf-variants/*: post-LN OPT with project_in/out,
 * untied bf16 OPT, GQA + tied + sharded Llama, f16 Llama with biases and an explicit head_dim) through the public
 * model API: logits and every captured tensor against PyTorch's float32 outputs, and a left-padded batch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
// the public API (src/index.ts), as a user of the package would call it
import { disposeOutput, ensureBackend, forward, loadModel, openSafetensors, type ForwardOutput } from '../src/index.js';
import { readTensorInt } from '../src/checkpoint/safetensors.js';
import { FIXTURES, loadReference, relFrob } from './helpers.js';

const ROOT = path.join(FIXTURES, 'hf-variants');
const VARIANTS = fs.readdirSync(ROOT).filter((f) => fs.existsSync(path.join(ROOT, f, 'reference.json'))).sort();
const TOL = 1e-4;

beforeAll(async () => { await ensureBackend('wasm'); });

/** the tensor the forward pass produced for a reference key, or undefined for input keys */
function produced(out: ForwardOutput, key: string, L: number): tf.Tensor | undefined | 'input' {
  if (key === 'logits') return out.logits;
  let m = /^hidden_states\.(\d+)$/.exec(key);
  if (m) return Number(m[1]) === L ? out.finalHidden : out.captured.xAttn?.[Number(m[1])];
  if ((m = /^mlp_act\.(\d+)$/.exec(key))) return out.captured.mlpAct?.[Number(m[1])];
  if ((m = /^attn_context\.(\d+)$/.exec(key))) return out.captured.attnContext?.[Number(m[1])];
  if (['input_ids', 'input_ids_padded', 'attention_mask', 'logits_padded'].includes(key)) return 'input';
  throw new Error(`reference key ${key} is not mapped to a forward output: extend this test`);
}

function ints(st: ReturnType<typeof openSafetensors>, key: string): number[][] {
  const [B, T] = st.tensors.get(key)!.shape as [number, number];
  const flat = readTensorInt(st, key);
  return Array.from({ length: B }, (_, b) => Array.from(flat.slice(b * T, (b + 1) * T)));
}

describe('HF variants: logits and captured tensors within relative Frobenius 1e-4', () => {
  it('finds the variant fixtures', () => { expect(VARIANTS.length).toBeGreaterThanOrEqual(4); });

  for (const v of VARIANTS) {
    const dir = path.join(ROOT, v);
    const meta = JSON.parse(fs.readFileSync(path.join(dir, 'reference.json'), 'utf8')) as { keys: string[]; padding?: { left_pad_rows: number[]; num_pad: number } };

    it(`${v}: every reference tensor`, () => {
      const ref = loadReference(dir);
      const before = tf.memory().numTensors;
      const model = loadModel(dir);
      const L = model.config.layers;
      const out = forward(model, ref.ids, { capture: { xAttn: true, mlpAct: true, attnContext: true, finalHidden: true } });
      try {
        let compared = 0;
        for (const key of meta.keys) {
          const t = produced(out, key, L);
          if (t === 'input') continue;
          const r = ref.tensors.get(key);
          expect(r, `${key} in reference.safetensors`).toBeDefined();
          expect(t, `${key} produced`).toBeDefined();
          expect(t!.shape, key).toEqual(r!.shape);
          const err = relFrob(t!.dataSync(), r!.data);
          expect(err, `${v} ${key}: relative error ${err}`).toBeLessThan(TOL);
          compared++;
        }
        // logits + (L+1) hidden states + L mlp_act + L attn_context
        expect(compared).toBe(1 + (L + 1) + 2 * L);
      } finally {
        disposeOutput(out);
        model.dispose();
      }
      expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
    });

    if (meta.keys.includes('input_ids_padded')) {
      it(`${v}: a left-padded batch gives the reference logits on real tokens`, () => {
        const st = openSafetensors(path.join(dir, 'reference.safetensors'));
        const ids = ints(st, 'input_ids_padded'), mask = ints(st, 'attention_mask');
        const ref = loadReference(dir);
        const want = ref.tensors.get('logits_padded')!, plain = ref.tensors.get('logits')!;
        const [B, T, V] = want.shape as [number, number, number];
        expect(mask.some((r) => r.includes(0))).toBe(true); // really padded
        const model = loadModel(dir);
        const out = forward(model, ids, { attentionMask: mask });
        try {
          const got = out.logits!.dataSync() as Float32Array;
          expect(out.logits!.shape).toEqual([B, T, V]);
          for (let b = 0; b < B; b++) {
            const real = mask[b]!.flatMap((m, t) => (m ? [t] : []));
            const pick = (a: Float32Array, rows: number[]) => Float32Array.from(rows.flatMap((t) => Array.from(a.subarray((b * T + t) * V, (b * T + t + 1) * V))));
            const err = relFrob(pick(got, real), pick(want.data, real));
            expect(err, `row ${b} vs logits_padded: ${err}`).toBeLessThan(TOL);
            // and the same as the unpadded run of the same tokens (positions restart at the first real token)
            const n = real.length;
            const firstN = Array.from({ length: n }, (_, t) => t);
            expect(ids[b]!.filter((_, t) => mask[b]![t])).toEqual(ref.ids[b]!.slice(0, n));
            const err2 = relFrob(pick(got, real), pick(plain.data, firstN));
            expect(err2, `row ${b} vs unpadded logits: ${err2}`).toBeLessThan(TOL);
          }
        } finally {
          disposeOutput(out);
          model.dispose();
        }
      });
    }
  }
});
