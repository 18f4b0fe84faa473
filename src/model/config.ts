/**
 * Hugging Face config.json dialects -> one normalized ModelConfig, through the architecture registry (src/arch/):
 * every family is mapped there, at the boundary; the forward pass only ever sees ModelConfig.
 */
import { z } from 'zod';
import { upgradeRecordedConfig } from '../arch/registry.js';
import type { ModelConfig } from '../arch/types.js';

export type { ModelConfig, Act, RopeScaling } from '../arch/types.js';
export { normalizeConfig } from '../arch/registry.js';
export { denseLayerFlopsPerToken } from '../arch/traits.js';
/** a family's id in the registry */
export type Family = string;

const count = z.number().int().positive();
const tokenId = z.number().int().nonnegative().nullable();
const ropeScaling = z.looseObject({ type: z.enum(['default', 'linear', 'dynamic', 'yarn', 'llama3']), factor: z.number(), attentionFactor: z.number() });
/** A normalized ModelConfig as recorded in artifacts (activations manifest, predictors.json), checked when read back. */
export const modelConfigSchema = z.preprocess(upgradeRecordedConfig, z.looseObject({
  family: z.string().min(1), vocabSize: count, hidden: count, layers: count, heads: count, kvHeads: count, headDim: count, ffn: count,
  maxPositions: count, norm: z.enum(['layernorm', 'rmsnorm']), normEps: z.number().positive(), preNorm: z.boolean(), finalNorm: z.boolean(),
  activation: z.enum(['relu', 'swiglu', 'gelu']), act: z.enum(['relu', 'fatrelu', 'silu', 'gelu', 'gelu_tanh']), actThreshold: z.number(), gated: z.boolean(),
  positions: z.enum(['learned', 'rope', 'alibi']), positionOffset: z.number().int().nonnegative(), ropeTheta: z.number().nonnegative(),
  ropeDim: z.number().int().nonnegative(), ropeScaling: ropeScaling.nullable(), block: z.enum(['sequential', 'parallel']), sharedNorm: z.boolean(), sandwichNorm: z.boolean(),
  qkNorm: z.boolean(), attnScale: z.number().positive(), attnSoftcap: z.number().positive().nullable(), finalSoftcap: z.number().positive().nullable(),
  windows: z.array(count.nullable()), embedScale: z.number().positive().nullable(), embedNorm: z.boolean(),
  layout: z.record(z.string(), z.union([z.boolean(), z.number(), z.string()])).optional(),
  embedProjDim: count.nullable(), tiedLmHead: z.boolean(), attnBias: z.boolean(), mlpBias: z.boolean(), bosTokenId: tokenId, eosTokenId: tokenId, padTokenId: tokenId,
}));
true satisfies (z.output<typeof modelConfigSchema> extends ModelConfig ? true : false);
