/** The pipeline's verdict lines (src/stages/verdict.ts): what a newcomer reads first. */
import { describe, expect, it } from 'vitest';
import { verdictText, type Headline } from '../src/stages/verdict.js';

const extra = { bundleVerified: 'verified', dataLine: 'data: d', timing: 'pipeline: 1 s', reportDir: 'w/report', planDir: 'w/plan' };
const headline = (inputs: (i: number) => string): Headline => ({
  model: 'm', shape: 'llama, 4 layers, d 192, ffn 512', workdir: 'w', bundle: 'w/bundle',
  evaluation: { text: 't', tokens: 10, heldoutTokens: 10, meanRecall: 0.99, meanDensity: 0.5, trueDensity: 0.1 },
  plan: { budget: 0.01, speedup: 1.12, estimatedSpeedup: 1.12, pplIncrease: 0.00589, tokens: 4064, densePerplexity: 60.048, perplexity: 60.402, denseStepMs: 1.622, stepMs: 1.449,
    layers: [0, 1, 2, 3].map((layer) => ({ layer, mlp: 'dense', heads: 'dense', inputs: inputs(layer), mlpDensity: 1 })) },
});

describe('verdict', () => {
  it('the plan line names the input-threshold sites: a plan whose MLP and heads are dense is faster through them (#25 walk-through: "layers 0–3 dense" at 1.12x)', () => {
    const lines = verdictText(headline((i) => (i < 3 ? 'attn, down' : 'down')), extra);
    expect(lines[1]).toBe('verdict: decode 1.12x dense at +0.589% perplexity (budget +1.0%); bundle: w/bundle (verified)');
    expect(lines[2]).toBe('  plan (MLP): layers 0–3 dense; heads dense; input thresholds: layers 0–2 attn, down; layer 3 down');
    expect(verdictText(headline(() => ''), extra)[2]).toBe('  plan (MLP): layers 0–3 dense; heads dense');
  });
});
