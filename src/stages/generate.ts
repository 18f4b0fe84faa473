import type { StageResult } from '../cli/commands.js';
import { loadBundlePredictors } from '../bundle/bundle.js';
import { loadModel } from '../model/model.js';
import { predictorHooks } from '../predictors/hooks.js';
import { generate } from '../runtime/generate.js';
import { loadTokenizer } from '../tokenizer.js';
import { UserError } from '../util/errors.js';
import type { StageDeps } from '../util/progress.js';

export interface GenerateCliOptions { model?: string; bundle?: string; prompt?: string[]; maxTokens?: number; temperature?: number; topK?: number; seed?: number }

export async function runGenerate(o: GenerateCliOptions, deps: StageDeps): Promise<StageResult> {
  if (!o.model) throw new UserError('--model is required', 'dejavu generate --model checkpoints/opt-fixture [--bundle runs/default/bundle] --prompt "text"');
  if (!o.prompt?.length) throw new UserError('--prompt is required');
  if (o.maxTokens !== undefined && (!Number.isInteger(o.maxTokens) || o.maxTokens < 1)) throw new UserError(`--max-tokens must be a positive integer, got ${o.maxTokens}`);
  if (o.temperature !== undefined && !(o.temperature >= 0)) throw new UserError(`--temperature must be >= 0, got ${o.temperature}`);
  const tok = loadTokenizer(o.model);
  const model = loadModel(o.model, { neuronMajor: Boolean(o.bundle) });
  const preds = o.bundle ? loadBundlePredictors(o.bundle, o.model) : null;
  try {
    const sel = { mlp: 0, mlpT: 0, heads: 0, headsT: 0 };
    const hooks = preds ? predictorHooks(preds, { mode: 'indices', mlp: true, heads: true, onSelect: (site, _l, s, t) => { if (site === 'mlp') { sel.mlp += s; sel.mlpT += t; } else { sel.heads += s; sel.headsT += t; } } }) : undefined;
    const bos = model.config.bosTokenId;
    const prompts = o.prompt.map((p) => [...(bos !== null ? [bos] : []), ...tok.encode(p)]);
    const r = generate(model, prompts, { maxNewTokens: o.maxTokens ?? 40, temperature: o.temperature ?? 0, topK: o.topK ?? 0, seed: o.seed ?? 0, sparsity: hooks });
    const texts = r.tokens.map((t) => tok.decode(t, { skipSpecial: true }));
    const tps = (r.decodeSteps * prompts.length) / Math.max(1e-3, r.decodeMs / 1000);
    deps.log(`generate: ${preds ? 'sparse (bundle)' : 'dense'}, ${r.decodeSteps} decode steps, ${tps.toFixed(1)} tokens/s` +
      (preds ? `, MLP density ${(sel.mlp / Math.max(1, sel.mlpT) * 100).toFixed(1)}%, heads ${(sel.heads / Math.max(1, sel.headsT) * 100).toFixed(1)}%` : ''));
    return {
      text: o.prompt.map((p, i) => `${p}${texts[i]}`).join('\n---\n'),
      json: { mode: preds ? 'sparse' : 'dense', prompts: o.prompt, completions: texts, tokens: r.tokens, decodeTokensPerSecond: tps, mlpDensity: preds ? sel.mlp / Math.max(1, sel.mlpT) : 1, headDensity: preds ? sel.heads / Math.max(1, sel.headsT) : 1 },
    };
  } finally {
    preds?.dispose();
    model.dispose();
  }
}
