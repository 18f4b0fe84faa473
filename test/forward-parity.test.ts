import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { loadModel } from '../src/model/model.js';
import { forward, disposeOutput } from '../src/model/forward.js';
import { FIXTURES, loadReference, relFrob } from './helpers.js';

beforeAll(async () => { await ensureBackend('wasm'); });

for (const name of ['opt-tiny-ref', 'llama-tiny-ref']) {
  describe(`HF parity: ${name}`, () => {
    it('logits and every captured tensor within relative Frobenius error 1e-4', () => {
      const dir = path.join(FIXTURES, name);
      const ref = loadReference(dir);
      const model = loadModel(dir);
      const before = tf.memory().numTensors;
      const out = forward(model, ref.ids, { capture: { xAttn: true, mlpAct: true, attnContext: true, finalHidden: true } });
      const L = model.config.layers;
      const check = (what: string, t: tf.Tensor | undefined, key: string) => {
        const r = ref.tensors.get(key)!;
        expect(t, what).toBeDefined();
        expect(t!.shape).toEqual(r.shape);
        const err = relFrob(t!.dataSync(), r.data);
        expect(err, `${what} rel err`).toBeLessThan(1e-4);
      };
      check('logits', out.logits, 'logits');
      for (let i = 0; i < L; i++) {
        check(`hidden_states.${i}`, out.captured.xAttn![i], `hidden_states.${i}`);
        check(`mlp_act.${i}`, out.captured.mlpAct![i], `mlp_act.${i}`);
        check(`attn_context.${i}`, out.captured.attnContext![i], `attn_context.${i}`);
      }
      check('final hidden', out.finalHidden, `hidden_states.${L}`);
      disposeOutput(out);
      expect(tf.memory().numTensors).toBe(before);
      model.dispose();
    });
  });
}
