/**
 * Defaults that fit the model they are given (the house rule): where a key is not set by the config, a flag or
 * --set, the pipeline's workdir is runs/<the model folder's name>, and sizes the schema would default to a fixed number are capped by the checkpoint's own sizes (sequence lengths
 * by its positions, the head predictor's rank by its width). Applied by the CLI below the user's settings; a model
 * that does not open adds nothing (the stage then reports it properly).
 */
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { normalizeConfig, type ModelConfig } from '../model/config.js';
import { defaultWorkdir } from './workdir.js';
import { collectSchema, evaluateSchema, planSchema, trainSchema } from '../config/schemas.js';

type Obj = Record<string, unknown>;

/** The checkpoint's config, or null when `dir` is not a checkpoint that opens. */
export function tryModelConfig(dir: unknown): ModelConfig | null {
  if (typeof dir !== 'string' || !dir) return null;
  try { return normalizeConfig(openCheckpoint(dir).rawConfig, dir); } catch { return null; }
}

/** The schema defaults these caps replace. */
const SEQ = { collect: collectSchema.shape.seqLen.parse(undefined), evaluate: evaluateSchema.shape.seqLen.parse(undefined), plan: planSchema.shape.seqLen.parse(undefined) };
const HEAD_RANK = trainSchema.shape.heads.parse(undefined).rank;

/** Model-fitted defaults for `command`'s config (a pipeline config nests them under its stages). */
export function modelDefaults(command: string, raw: Obj): Obj {
  const workdir = (command === 'pipeline' || command === 'estimate') && typeof raw.model === 'string' && raw.model ? { workdir: defaultWorkdir(raw.model) } : {};
  const mc = tryModelConfig(raw.model);
  if (!mc) return workdir;
  const seq = (n: number) => Math.min(n, mc.maxPositions);
  const rank = Math.min(HEAD_RANK, mc.hidden);
  switch (command) {
    case 'collect-activations': return { seqLen: seq(SEQ.collect) };
    case 'evaluate-recall': return { seqLen: seq(SEQ.evaluate) };
    case 'plan': return { seqLen: seq(SEQ.plan) };
    case 'train-predictors': return { heads: { rank } };
    case 'pipeline': case 'estimate': return { ...workdir, collect: { seqLen: seq(SEQ.collect) }, evaluate: { seqLen: seq(SEQ.evaluate) }, plan: { seqLen: seq(SEQ.plan) }, train: { heads: { rank } } };
    default: return {};
  }
}
