/**
 * One strict schema per command. Keys are documented in README.md; every YAML in configs/ is validated by a test.
 * A core module (README "Architecture"): the CLI and the stages resolve configs with it, and the predictor training
 * takes its `TrainConfig`; it imports only the backend list and util.
 */
import { z } from 'zod';
import { BACKEND_PREFERENCES } from '../backend.js';

const backend = z.enum(BACKEND_PREFERENCES).default('auto');
const layers = z.union([z.literal('all'), z.array(z.number().int().min(0)).min(1)]).default('all');
const posInt = z.number().int().positive();
/** --shard i/n (issue 26): this process does shard i of n of a data-parallel stage; `dejavu merge` joins the n outputs */
export const shardSchema = z.strictObject({ index: z.number().int().min(0), count: posInt })
  .refine((s) => s.index < s.count, { message: 'the shard index must be below the shard count (0-based: 0/3, 1/3, 2/3)', path: ['index'] });
export type Shard = z.infer<typeof shardSchema>;

export const collectSchema = z.strictObject({
  model: z.string().min(1, 'a checkpoint folder is required (--model)'),
  data: z.string().min(1, 'a data file is required (--data)'),
  out: z.string().min(1, 'an output folder is required (--out)'),
  seqLen: posInt.default(256),
  /** stop after this many tokens (all data when absent) */
  maxTokens: posInt.optional(),
  batchSize: posInt.default(8),
  layers,
  dtype: z.enum(['float16', 'float32']).default('float16'),
  /** rows (tokens) per Arrow shard */
  rowsPerShard: posInt.default(8192),
  /** record float16 MLP activation magnitudes; auto = on for non-ReLU models */
  recordMlpAct: z.union([z.literal('auto'), z.boolean()]).default('auto'),
  /** worker threads (one tfjs each; batches dealt out, written in order; the dataset is the same for any count); 0 = one per core */
  workers: z.number().int().min(0).default(0),
  overwrite: z.boolean().default(false),
  backend,
  shard: shardSchema.optional(),
});
export type CollectConfig = z.infer<typeof collectSchema>;

const labelRule = z.strictObject({
  /** active: ReLU > 0 (ReLU models); topFraction: the top `value` fraction by |activation|; threshold: |activation| > value */
  kind: z.enum(['auto', 'active', 'topFraction', 'threshold']).default('auto'),
  value: z.number().positive().default(0.1),
});

export const trainSchema = z.strictObject({
  activations: z.string().min(1, 'an activations folder is required (--activations)'),
  /** the checkpoint (default: the one recorded in the activations manifest; its fingerprint must match) */
  model: z.string().min(1).optional(),
  out: z.string().min(1, 'an output folder is required (--out)'),
  layers,
  seed: z.number().int().default(0),
  /** worker threads (one tfjs each); 0 = one per core */
  workers: z.number().int().min(0).default(0),
  validationFraction: z.number().gt(0).lt(0.5).default(0.1),
  /** cap on training tokens read per layer (all when absent) */
  maxSamples: posInt.optional(),
  overwrite: z.boolean().default(false),
  backend,
  /** --shard i/n: only the layers at positions i, i+n, ... of the layer list (dejavu merge --kind predictors joins them) */
  shard: shardSchema.optional(),
  mlp: z.strictObject({
    enabled: z.boolean().default(true),
    /**
     * candidate modes per layer; the one with the lowest estimated MLP cost at the target recall is chosen.
     * dense: every neuron; exact: the first projection itself, then only the active rows of the second (ReLU,
     * lossless); closed-form: whitened low-rank fit of the first projection(s) on the MLP's own input (no training);
     * dejavu: Deja Vu's trained low-rank predictor (rank, input, hiddenActivation, optim.*)
     */
    families: z.array(z.enum(['dense', 'exact', 'closed-form', 'dejavu'])).min(1).default(['dense', 'exact', 'closed-form']),
    /** closed-form ranks to try: values <= 1 are fractions of the model width d */
    ranks: z.array(z.number().positive()).min(1).default([0.125, 0.25, 0.5]),
    /** closed form: divide each neuron's score by its residual std (per-neuron thresholds, free at run time) */
    normalize: z.boolean().default(true),
    /** continue training the chosen closed form with Deja Vu's weighted BCE (0 = off); kept only when it costs less */
    fineTune: z.strictObject({ epochs: z.number().int().min(0).default(0), lr: z.number().positive().default(1e-3) }).prefault({}),
    /** dejavu family: rank (<= 1: fraction of d), hidden activation and input */
    rank: z.number().positive().default(0.5),
    hiddenActivation: z.enum(['none', 'relu']).default('none'),
    input: z.enum(['x_attn', 'x_mlp', 'h_mlp']).default('x_attn'),
    label: labelRule.default({ kind: 'auto', value: 0.1 }),
    targetRecall: z.number().gt(0).lte(1).default(0.99),
    /** count: fraction of active neurons kept; magnitude: fraction of sum |activation| x ||down column|| kept */
    recallWeighting: z.enum(['count', 'magnitude']).default('count'),
    /** selection rule: topk (per-layer k per token), threshold (per-layer threshold on the score), auto = the cheaper */
    rule: z.enum(['auto', 'topk', 'threshold']).default('auto'),
    /** validation rows kept in memory for calibration and the choice */
    maxCalibrationRows: posInt.default(16384),
  }).prefault({}),
  heads: z.strictObject({
    enabled: z.boolean().default(true),
    rank: posInt.default(128),
    input: z.enum(['prev', 'same']).default('prev'),
    topFraction: z.number().gt(0).lte(1).default(0.3),
    targetRecall: z.number().gt(0).lte(1).default(0.95),
    rule: z.enum(['topk', 'threshold']).default('topk'),
  }).prefault({}),
  optim: z.strictObject({
    batchSize: posInt.default(256),
    epochs: posInt.default(8),
    lr: z.number().positive().default(1e-3),
    weightDecay: z.number().min(0).default(0.01),
    /** stop when validation recall has not improved for this many epochs */
    patience: posInt.default(2),
  }).prefault({}),
});
export type TrainConfig = z.infer<typeof trainSchema>;

export const evaluateSchema = z.strictObject({
  activations: z.string().min(1, 'a held-out activations folder is required (--activations)'),
  predictors: z.string().min(1, 'a predictors folder is required (--predictors)'),
  out: z.string().min(1, 'an output folder is required (--out)'),
  /** checkpoint for the end-to-end perplexity part (skipped when absent) */
  model: z.string().optional(),
  /** held-out text for perplexity (default: the data file recorded in the activations manifest) */
  data: z.string().optional(),
  seqLen: posInt.default(256),
  maxTokens: posInt.default(16384),
  batchSize: posInt.default(4),
  sweep: z.array(z.number().gt(0).lte(1)).min(2).default([0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1]),
  /**
   * perplexity-vs-density curve: for each target average MLP density, the predictors' per-layer k are scaled
   * proportionally (k_l = F * min(1, D * calibrated_l / mean calibrated)) and predicted-MLP perplexity is measured
   */
  densitySweep: z.array(z.number().gt(0).lte(1)).default([0.1, 0.15, 0.2, 0.3]),
  /** worker threads for the recall pass and the perplexity runs (the report is the same for any count); 0 = one per core */
  workers: z.number().int().min(0).default(0),
  backend,
  /** --shard i/n: every recall pass, and the perplexity batches j with j mod n = i (dejavu merge --kind report joins them) */
  shard: shardSchema.optional(),
});
export type EvaluateConfig = z.infer<typeof evaluateSchema>;

export const exportSchema = z.strictObject({
  model: z.string().min(1, 'a checkpoint folder is required (--model)'),
  predictors: z.string().min(1, 'a predictors folder is required (--predictors)'),
  report: z.string().optional(),
  /** plan folder from `dejavu plan`: written into the bundle, followed by generate */
  plan: z.string().optional(),
  out: z.string().min(1, 'an output folder is required (--out)'),
  neuronMajor: z.boolean().default(true),
  overwrite: z.boolean().default(false),
});
export type ExportConfig = z.infer<typeof exportSchema>;

export const planSchema = z.strictObject({
  model: z.string({ error: 'a checkpoint folder is required (--model)' }).min(1, 'a checkpoint folder is required (--model)'),
  predictors: z.string({ error: 'a predictors folder is required (--predictors)' }).min(1, 'a predictors folder is required (--predictors)'),
  activations: z.string({ error: 'a held-out activations folder is required (--activations)' }).min(1, 'a held-out activations folder is required (--activations)'),
  /** held-out text for the search and the verification (default: the data file recorded in the activations manifest) */
  data: z.string().optional(),
  out: z.string({ error: 'an output folder is required (--out)' }).min(1, 'an output folder is required (--out)'),
  /** the budget: largest perplexity increase over dense allowed, as a fraction (0.01 = +1%) */
  maxPplIncrease: z.number().min(0).max(1).default(0.01),
  /** predicted MLP options: thresholds calibrated to these recalls on the held-out activations */
  recalls: z.array(z.number().gt(0).lte(1)).min(1).default([0.9, 0.95, 0.98, 0.99]),
  /** head options (layers with a head predictor): keep these shares of the heads */
  headFractions: z.array(z.number().gt(0).lt(1)).default([0.25, 0.5, 0.75]),
  seqLen: posInt.default(128),
  /** tokens of held-out text for the search (single-layer perplexities) and, disjoint, for the runtime's verification */
  searchTokens: posInt.default(2048),
  verifyTokens: posInt.default(4096),
  batchSize: posInt.default(4),
  /** held-out activation rows per layer for calibrating the thresholds */
  calibrationRows: posInt.default(8192),
  /** the search spends at most this share of the budget on its estimate (sum of single-layer increases) */
  safety: z.number().gt(0).lte(1).default(0.8),
  /**
   * a lossy move (predicted MLP or fewer heads) must gain at least this many times the perplexity increase it costs,
   * both as shares (1: at least 1% of decode time for each 1% of perplexity)
   */
  minSpeedPerPpl: z.number().min(0).default(1),
  /** never slower than dense: when the verified plan does not decode faster than dense (measured twice), the plan is dense */
  neverSlower: z.boolean().default(true),
  overwrite: z.boolean().default(false),
  backend,
  /** --shard i/n: only the single-layer perplexities of layers i, i+n, ... (dejavu merge --kind plan searches and verifies) */
  shard: shardSchema.optional(),
});
export type PlanConfig = z.infer<typeof planSchema>;

export const pipelineSchema = z.strictObject({
  model: z.string().min(1),
  workdir: z.string().min(1).default('runs/default'),
  backend,
  data: z.strictObject({ calibration: z.string().min(1), heldout: z.string().min(1) }),
  collect: collectSchema.omit({ model: true, data: true, out: true, backend: true, shard: true }).prefault({}),
  heldoutCollect: z.strictObject({ maxTokens: posInt.optional() }).prefault({}),
  train: trainSchema.omit({ activations: true, out: true, backend: true, shard: true }).prefault({}),
  evaluate: evaluateSchema.omit({ activations: true, predictors: true, out: true, model: true, data: true, backend: true, shard: true }).prefault({}),
  plan: planSchema.omit({ model: true, predictors: true, activations: true, data: true, out: true, backend: true, shard: true }).extend({ enabled: z.boolean().default(true) }).prefault({}),
  export: exportSchema.omit({ model: true, predictors: true, report: true, plan: true, out: true }).prefault({}),
  /** issue 26 (src/stages/scale-out.ts): write Slurm / Kubernetes jobs for `shards` shards, or run one step of them */
  scaleOut: z.strictObject({
    scheduler: z.enum(['slurm', 'k8s']).optional(),
    shards: posInt.optional(),
    step: z.enum(['collect-calibration', 'collect-heldout', 'merge-calibration', 'merge-heldout', 'train', 'merge-predictors']).optional(),
    shard: shardSchema.optional(),
    submit: z.boolean().default(false),
    image: z.string().min(1).default('dejavu-ts:latest'),
    pvc: z.string().min(1).default('dejavu-shared'),
  }).optional(),
});
export type PipelineConfig = z.infer<typeof pipelineSchema>;

/** dejavu generate's flags (no config file): validated together, problems named by flag. */
export const generateSchema = z.strictObject({
  model: z.string({ error: 'a checkpoint folder is required' }).min(1, 'a checkpoint folder is required'),
  bundle: z.string().min(1).optional(),
  prompt: z.array(z.string(), { error: 'at least one prompt is required' }).min(1, 'at least one prompt is required'),
  maxTokens: z.number({ error: 'expected a positive integer' }).int('expected a positive integer').positive('expected a positive integer').default(40),
  temperature: z.number({ error: 'expected a number >= 0' }).min(0, 'expected a number >= 0 (0 = greedy)').default(0),
  topK: z.number({ error: 'expected an integer >= 0' }).int('expected an integer >= 0').min(0, 'expected an integer >= 0 (0 = no top-k cut)').default(0),
  seed: z.number({ error: 'expected an integer' }).int('expected an integer').default(0),
  backend,
});
export type GenerateConfig = z.infer<typeof generateSchema>;

export const SCHEMAS = {
  'collect-activations': collectSchema,
  'train-predictors': trainSchema,
  'evaluate-recall': evaluateSchema,
  plan: planSchema,
  'export-bundle': exportSchema,
  pipeline: pipelineSchema,
} as const;
