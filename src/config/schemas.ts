/**
 * One strict schema per command. Every key carries its documentation (.describe()); docs/configuration.md is generated
 * from these schemas (`npm run docs`, src/config/docs.ts) and a test fails when it is stale; every YAML in configs/ is
 * validated by a test.
 * A core module (README "Architecture"): the CLI and the stages resolve configs with it, and the predictor training
 * takes its `TrainConfig`; it imports only the backend list and util.
 */
import { z } from 'zod';
import { BACKEND_PREFERENCES } from '../backend.js';

const backend = z.enum(BACKEND_PREFERENCES).default('auto').describe('tfjs backend: auto picks the fastest available (tensorflow > webgpu on a hardware adapter > wasm > cpu)');
const layers = z.union([z.literal('all'), z.array(z.number().int().min(0)).min(1)]).default('all').describe('layer indices to work on, or all');
const posInt = z.number().int().positive();
/** --shard i/n (issue 26): this process does shard i of n of a data-parallel stage; `dejavu merge` joins the n outputs */
export const shardSchema = z.strictObject({ index: z.number().int().min(0).describe('this shard, 0-based'), count: posInt.describe('how many shards the run is split into') })
  .refine((s) => s.index < s.count, { message: 'the shard index must be below the shard count (0-based: 0/3, 1/3, 2/3)', path: ['index'] });
export type Shard = z.infer<typeof shardSchema>;

export const collectSchema = z.strictObject({
  model: z.string().min(1, 'a checkpoint folder is required (--model)').describe('Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json)'),
  data: z.string().min(1, 'a data file is required (--data)').describe('text: JSONL (.jsonl/.ndjson/.json) with "text" or pre-tokenized "ids" per line, or plain text (one document)'),
  out: z.string().min(1, 'an output folder is required (--out)').describe('output dataset folder'),
  seqLen: posInt.default(256).describe('tokens per packed sequence (default capped at the model\'s positions)'),
  maxTokens: posInt.optional().describe('stop after this many tokens (all the data when absent)'),
  batchSize: posInt.default(8).describe('sequences per forward pass'),
  layers,
  dtype: z.enum(['float16', 'float32']).default('float16').describe('stored hidden-state dtype'),
  rowsPerShard: posInt.default(8192).describe('rows (tokens) per Arrow shard'),
  recordMlpAct: z.union([z.literal('auto'), z.boolean()]).default('auto').describe('record float16 MLP activation magnitudes; auto = on for non-ReLU models'),
  workers: z.number().int().min(0).default(0).describe('worker threads (one tfjs each; batches dealt out, written in order: the same dataset for any count); 0 = one per core'),
  overwrite: z.boolean().default(false).describe('replace an existing output folder made from different inputs'),
  backend,
  shard: shardSchema.optional().describe('run only shard i of n of this stage (i/n, 0-based), into its own --out; `dejavu merge` joins the shards (docs/scale-out.md)'),
});
export type CollectConfig = z.infer<typeof collectSchema>;

const labelRule = z.strictObject({
  kind: z.enum(['auto', 'active', 'topFraction', 'threshold']).default('auto').describe('which neurons count as active: active = ReLU > 0 (ReLU models); topFraction = the top `value` share by |activation|; threshold = |activation| > value; auto = active for ReLU, else topFraction'),
  value: z.number().positive().default(0.1).describe('the share (topFraction) or the threshold'),
});

export const trainSchema = z.strictObject({
  activations: z.string().min(1, 'an activations folder is required (--activations)').describe('dataset folder from collect-activations (calibration text)'),
  model: z.string().min(1).optional().describe('the checkpoint (default: the one recorded in the activations manifest; its fingerprint must match)'),
  out: z.string().min(1, 'an output folder is required (--out)').describe('output predictors folder'),
  layers,
  seed: z.number().int().default(0).describe('random seed (initialisation, shuffling, the validation split)'),
  workers: z.number().int().min(0).default(0).describe('worker threads (one tfjs each; layers dealt out); 0 = one per core'),
  validationFraction: z.number().gt(0).lt(0.5).default(0.1).describe('share of the calibration rows held back to calibrate and choose each layer\'s predictor'),
  maxSamples: posInt.optional().describe('cap on training tokens read per layer (all when absent)'),
  overwrite: z.boolean().default(false).describe('replace an existing output folder made from different inputs'),
  backend,
  /** --shard i/n: only the layers at positions i, i+n, ... of the layer list (dejavu merge --kind predictors joins them) */
  shard: shardSchema.optional().describe('run only shard i of n of this stage (i/n, 0-based), into its own --out; `dejavu merge` joins the shards (docs/scale-out.md)'),
  mlp: z.strictObject({
    enabled: z.boolean().default(true).describe('fit MLP-neuron predictors'),
    predictors: z.array(z.enum(['dense', 'exact', 'closed-form', 'dejavu'])).min(1).default(['dense', 'exact', 'closed-form'])
      .describe('the predictors to try per layer (formerly `families`); the one with the lowest estimated MLP cost at the target recall is chosen. dense: every neuron; exact: the first projection itself, then only the active rows of the second (ReLU, lossless); closed-form: whitened low-rank fit of the first projection(s) on the MLP\'s own input (no training); dejavu: Deja Vu\'s trained low-rank predictor (rank, input, hiddenActivation, optim.*)'),
    ranks: z.array(z.number().positive()).min(1).default([0.125, 0.25, 0.5]).describe('closed-form ranks to try: values <= 1 are fractions of the model width d'),
    normalize: z.boolean().default(true).describe('closed form: divide each neuron\'s score by its residual std (per-neuron thresholds, free at run time)'),
    fineTune: z.strictObject({
      epochs: z.number().int().min(0).default(0).describe('epochs of fine-tuning (0 = off)'),
      lr: z.number().positive().default(1e-3).describe('fine-tuning learning rate'),
    }).prefault({}).describe('continue training the chosen closed form with Deja Vu\'s weighted BCE; kept only when it costs less'),
    rank: z.number().positive().default(0.5).describe('dejavu predictor: predictor rank (<= 1: fraction of d)'),
    hiddenActivation: z.enum(['none', 'relu']).default('none').describe('dejavu predictor: activation between the predictor\'s two matrices'),
    input: z.enum(['x_attn', 'x_mlp', 'h_mlp']).default('x_attn').describe('dejavu predictor: the predictor\'s input (x_attn: the block input, Deja Vu\'s lookahead; x_mlp: the MLP input; h_mlp: the normed MLP input)'),
    label: labelRule.default({ kind: 'auto', value: 0.1 }).describe('which neurons are the positives to predict'),
    targetRecall: z.number().gt(0).lte(1).default(0.99).describe('share of the active neurons the calibrated rule must keep (on the validation rows)'),
    recallWeighting: z.enum(['count', 'magnitude']).default('count').describe('count: share of active neurons kept; magnitude: share of sum |activation| x ||down column|| kept'),
    rule: z.enum(['auto', 'topk', 'threshold']).default('auto').describe('selection rule: topk (per-layer k per token), threshold (per-layer threshold on the score), auto = the cheaper'),
    maxCalibrationRows: posInt.default(16384).describe('validation rows kept in memory for calibration and the choice'),
  }).prefault({}).describe('MLP-neuron predictors'),
  heads: z.strictObject({
    enabled: z.boolean().default(true).describe('fit attention-head predictors'),
    rank: posInt.default(128).describe('head predictor rank (default capped at the model width)'),
    input: z.enum(['prev', 'same']).default('prev').describe('prev: layer i\'s heads are predicted from layer i-1\'s input (Deja Vu\'s lookahead); same: from layer i\'s input'),
    topFraction: z.number().gt(0).lte(1).default(0.3).describe('share of each token\'s heads labelled important (the positives to predict)'),
    targetRecall: z.number().gt(0).lte(1).default(0.95).describe('share of the important heads the calibrated rule must keep'),
    rule: z.enum(['topk', 'threshold']).default('topk').describe('selection rule for heads'),
  }).prefault({}).describe('attention-head predictors'),
  optim: z.strictObject({
    batchSize: posInt.default(256).describe('rows per optimiser step'),
    epochs: posInt.default(8).describe('most epochs'),
    lr: z.number().positive().default(1e-3).describe('Adam learning rate'),
    weightDecay: z.number().min(0).default(0.01).describe('AdamW weight decay'),
    patience: posInt.default(2).describe('stop when validation recall has not improved for this many epochs'),
  }).prefault({}).describe('training of the trained predictors (dejavu family, heads, fine-tuning)'),
});
export type TrainConfig = z.infer<typeof trainSchema>;

export const evaluateSchema = z.strictObject({
  activations: z.string().min(1, 'a held-out activations folder is required (--activations)').describe('held-out dataset folder from collect-activations'),
  predictors: z.string().min(1, 'a predictors folder is required (--predictors)').describe('folder from train-predictors'),
  out: z.string().min(1, 'an output folder is required (--out)').describe('report folder'),
  model: z.string().optional().describe('checkpoint for the end-to-end perplexity part (skipped when absent)'),
  data: z.string().optional().describe('held-out text for perplexity (default: the data file recorded in the activations manifest)'),
  seqLen: posInt.default(256).describe('tokens per sequence for perplexity (default capped at the model\'s positions)'),
  maxTokens: posInt.default(16384).describe('held-out tokens for perplexity'),
  batchSize: posInt.default(4).describe('sequences per forward pass'),
  sweep: z.array(z.number().gt(0).lte(1)).min(2).default([0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1]).describe('kept shares of neurons at which recall and precision are reported (recall-vs-density curve)'),
  densitySweep: z.array(z.number().gt(0).lte(1)).default([0.1, 0.15, 0.2, 0.3])
    .describe('perplexity-vs-density curve: for each target average MLP density D, the per-layer k are scaled proportionally (k_l = F * min(1, D * calibrated_l / mean calibrated)) and predicted-MLP perplexity is measured; [] = off'),
  workers: z.number().int().min(0).default(0).describe('worker threads for the recall pass and the perplexity runs (the same report for any count); 0 = one per core'),
  backend,
  /** --shard i/n: every recall pass, and the perplexity batches j with j mod n = i (dejavu merge --kind report joins them) */
  shard: shardSchema.optional().describe('run only shard i of n of this stage (i/n, 0-based), into its own --out; `dejavu merge` joins the shards (docs/scale-out.md)'),
});
export type EvaluateConfig = z.infer<typeof evaluateSchema>;

export const exportSchema = z.strictObject({
  model: z.string().min(1, 'a checkpoint folder is required (--model)').describe('checkpoint folder'),
  predictors: z.string().min(1, 'a predictors folder is required (--predictors)').describe('folder from train-predictors'),
  report: z.string().optional().describe('folder from evaluate-recall (expected recall and density, written into the bundle)'),
  plan: z.string().optional().describe('folder from plan: its per-layer runtime modes are written into the bundle and followed by generate'),
  out: z.string().min(1, 'an output folder is required (--out)').describe('bundle folder'),
  neuronMajor: z.boolean().default(true).describe('also store the MLP weights neuron-major (one contiguous row per neuron: what the sparse decode reads)'),
  overwrite: z.boolean().default(false).describe('replace an existing output folder made from different inputs'),
});
export type ExportConfig = z.infer<typeof exportSchema>;

export const planSchema = z.strictObject({
  model: z.string({ error: 'a checkpoint folder is required (--model)' }).min(1, 'a checkpoint folder is required (--model)').describe('checkpoint folder'),
  predictors: z.string({ error: 'a predictors folder is required (--predictors)' }).min(1, 'a predictors folder is required (--predictors)').describe('folder from train-predictors'),
  activations: z.string({ error: 'a held-out activations folder is required (--activations)' }).min(1, 'a held-out activations folder is required (--activations)').describe('held-out dataset folder from collect-activations'),
  data: z.string().optional().describe('held-out text for the search and the verification (default: the data file recorded in the activations manifest)'),
  out: z.string({ error: 'an output folder is required (--out)' }).min(1, 'an output folder is required (--out)').describe('plan folder'),
  maxPplIncrease: z.number().min(0).max(1).default(0.01).describe('the budget: largest perplexity increase over dense allowed, as a fraction (0.01 = +1%); flag --max-ppl-increase'),
  recalls: z.array(z.number().gt(0).lte(1)).min(1).default([0.9, 0.95, 0.98, 0.99]).describe('predicted-MLP options: thresholds calibrated to these recalls on the held-out activations'),
  headFractions: z.array(z.number().gt(0).lt(1)).default([0.25, 0.5, 0.75]).describe('head options (layers with a head predictor): keep these shares of the heads'),
  seqLen: posInt.default(128).describe('tokens per sequence for the perplexities (default capped at the model\'s positions)'),
  searchTokens: posInt.default(2048).describe('held-out tokens for the search (single-layer perplexities)'),
  verifyTokens: posInt.default(4096).describe('held-out tokens, disjoint from the search\'s, for the runtime\'s verification of the chosen plan'),
  batchSize: posInt.default(4).describe('sequences per forward pass'),
  calibrationRows: posInt.default(8192).describe('held-out activation rows per layer for calibrating the thresholds'),
  safety: z.number().gt(0).lte(1).default(0.8).describe('the search spends at most this share of the budget on its estimate (sum of single-layer increases)'),
  minSpeedPerPpl: z.number().min(0).default(1).describe('a lossy move (predicted MLP or fewer heads) must gain at least this many times the perplexity increase it costs, both as shares (1: at least 1% of decode time for each 1% of perplexity)'),
  objective: z.enum(['time', 'bytes']).default('time').describe('what the search saves: time = the cost model\'s decode ms (kernels timed on this machine), bytes = decoder-layer weights read per token (machine-independent; predictors\' own weights left out); minSpeedPerPpl applies to that share'),
  eightBit: z.boolean().default(true).describe('also decode the verification text with the chosen plan on 8-bit (q8_0) weights and report its perplexity increase and speed beside the plan\'s (plan.verified.eightBit; `generate --dtype q8_0` runs it)'),
  neverSlower: z.boolean().default(true).describe('when the verified plan does not decode faster than dense (measured twice), the plan is dense'),
  runtime: z.enum(['cpu', 'gpu']).default('cpu').describe('the decode runtime the plan is priced for (recorded as plan.runtime; `generate` notes a plan run on another): cpu = the wasm row kernels timed on this CPU, gpu = the GPU decode runtime\'s WGSL kernels timed on this machine\'s WebGPU adapter (docs/gpu-decode.md), its timing of the verified plan there too; only what that runtime runs is offered (no gate thresholds or gated predictors)'),
  gpuTimingSteps: posInt.default(199).describe('runtime gpu: greedy steps of each timed run when the verified plan and dense are timed on the GPU (default 199: generate\'s --max-tokens 200; capped at the model\'s positions); fewer is quicker and noisier'),
  sites: z.boolean().default(true).describe('training-free options of the search (docs/sparsity.md): input thresholds at q/k/v, o, the MLP input and down (TEAL / WINA), the gate threshold of gated MLPs (CATS)'),
  siteSparsities: z.array(z.number().gt(0).lt(1)).min(1).default([0.35, 0.5, 0.65]).describe('input- and gate-threshold options: thresholds at these shares of each site\'s calibration scores'),
  siteScore: z.enum(['abs', 'wina', 'both']).default('abs').describe('input-threshold score: abs = |x_i| (TEAL), wina = |x_i| times the column norm of the site\'s weights (WINA), both = options of each'),
  calibrationData: z.string().min(1).optional().describe('text the thresholds are calibrated on (default: the text the predictors\' calibration activations were collected from)'),
  calibrationTokens: posInt.default(8192).describe('calibration tokens for the thresholds (streaming histograms per layer and site)'),
  overwrite: z.boolean().default(false).describe('replace an existing output folder made from different inputs'),
  backend,
  /** --shard i/n: only the single-layer perplexities of layers i, i+n, ... (dejavu merge --kind plan searches and verifies) */
  shard: shardSchema.optional().describe('run only shard i of n of this stage (i/n, 0-based), into its own --out; `dejavu merge` joins the shards (docs/scale-out.md)'),
});
export type PlanConfig = z.infer<typeof planSchema>;

export const pipelineSchema = z.strictObject({
  model: z.string().min(1).describe('Hugging Face checkpoint folder'),
  workdir: z.string().min(1).optional().describe('where stage outputs go (default: runs/<the model folder\'s name>)'),
  backend,
  data: z.union([
    z.string().min(1),
    z.strictObject({
      calibration: z.string().min(1).describe('text the predictors are trained and calibrated on'),
      heldout: z.string().min(1).describe('text for evaluation and the plan only'),
    }).describe('the two parts'),
  ], { error: 'a data file is required (--data FILE, optionally --heldout FILE)' }).describe('the text: one file (its last 10% of documents are held out, the rest calibrates: JSONL lines; a plain-text file is cut at the first blank line after 90% of its characters; the parts are written to the workdir and recorded in its split.json), or the two parts { calibration, heldout }'),
  collect: collectSchema.omit({ model: true, data: true, out: true, backend: true, shard: true }).prefault({}).describe('collect-activations, for both the calibration and the held-out text'),
  heldoutCollect: z.strictObject({ maxTokens: posInt.optional().describe('stop after this many held-out tokens (default: collect.maxTokens)') }).prefault({}).describe('the held-out collect\'s own settings'),
  train: trainSchema.omit({ activations: true, out: true, backend: true, shard: true }).prefault({}).describe('train-predictors'),
  evaluate: evaluateSchema.omit({ activations: true, predictors: true, out: true, model: true, data: true, backend: true, shard: true }).prefault({}).describe('evaluate-recall'),
  plan: planSchema.omit({ model: true, predictors: true, activations: true, data: true, out: true, backend: true, shard: true })
    .extend({ enabled: z.boolean().default(true).describe('make a plan (off: the bundle carries the train-only rules)') }).prefault({}).describe('plan'),
  export: exportSchema.omit({ model: true, predictors: true, report: true, plan: true, out: true }).prefault({}).describe('export-bundle'),
  /** issue 26 (src/stages/scale-out.ts): write Slurm / Kubernetes jobs for `shards` shards, or run one step of them */
  scaleOut: z.strictObject({
    scheduler: z.enum(['slurm', 'k8s']).optional().describe('write the pipeline as Slurm array jobs or Kubernetes Indexed Jobs into WORKDIR/jobs (docs/scale-out.md)'),
    shards: posInt.optional().describe('how many shards each data-parallel step is split into'),
    step: z.enum(['collect-calibration', 'collect-heldout', 'merge-calibration', 'merge-heldout', 'train', 'merge-predictors']).optional().describe('run one step of the written jobs (set by the job scripts)'),
    shard: shardSchema.optional().describe('which shard of the step this process runs, i/n (set by the job scripts)'),
    submit: z.boolean().default(false).describe('Slurm: submit the written jobs and wait for them'),
    image: z.string().min(1).default('dejavu-ts:latest').describe('Kubernetes: the container image the jobs run'),
    pvc: z.string().min(1).default('dejavu-shared').describe('Kubernetes: the ReadWriteMany PersistentVolumeClaim holding the workdir'),
  }).optional().describe('scale-out: sharded steps as cluster jobs'),
});
export type PipelineConfig = z.infer<typeof pipelineSchema>;

/** dejavu estimate: a pipeline config (the costs of that pipeline), the data optional (1M calibration tokens assumed without it) */
export const estimateSchema = pipelineSchema.extend({ data: pipelineSchema.shape.data.optional() });
export type EstimateConfig = z.infer<typeof estimateSchema>;

/** dejavu generate's flags (no config file): validated together, problems named by flag. */
export const generateSchema = z.strictObject({
  model: z.string({ error: 'a checkpoint folder is required' }).min(1, 'a checkpoint folder is required').describe('checkpoint folder'),
  bundle: z.string().min(1).optional().describe('sparse bundle from export-bundle (dense without it)'),
  prompt: z.array(z.string(), { error: 'at least one prompt is required' }).min(1, 'at least one prompt is required').describe('prompt texts (one per sequence of the batch)'),
  maxTokens: z.number({ error: 'expected a positive integer' }).int('expected a positive integer').positive('expected a positive integer').default(40).describe('tokens to generate'),
  temperature: z.number({ error: 'expected a number >= 0' }).min(0, 'expected a number >= 0 (0 = greedy)').default(0).describe('0 = greedy; > 0 samples'),
  topK: z.number({ error: 'expected an integer >= 0' }).int('expected an integer >= 0').min(0, 'expected an integer >= 0 (0 = no top-k cut)').default(0).describe('sample from the k most likely tokens (0 = no cut)'),
  seed: z.number({ error: 'expected an integer' }).int('expected an integer').default(0).describe('sampling seed'),
  dtype: z.enum(['auto', 'float32', 'float16', 'bfloat16', 'q8_0']).default('auto').describe('decode weights: auto = the checkpoint\'s own half precision (float16 / bfloat16: exact), else float32; q8_0 = 8-bit blocks (lossy: plan reports its perplexity cost)'),
  threads: z.union([z.number().int().positive(), z.literal('auto')], { error: 'expected a thread count >= 1 or auto' }).default('auto').describe('threads for the decode kernels (auto: measured at load)'),
  kernels: z.enum(['auto', 'native', 'wasm']).default('auto').describe('decode row kernels: native (AVX2 / FMA / F16C, built at install with a C compiler), wasm (WebAssembly SIMD), auto = native where built and supported'),
  runtime: z.enum(['cpu', 'gpu']).default('cpu').describe('decode runtime: cpu (the native or wasm row kernels) or gpu (WebGPU / WGSL kernels; greedy, one prompt at a time)'),
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
  estimate: estimateSchema,
} as const;
