/** Command table: flags map onto config keys (dotted paths); the stage does the work. */
import { InvalidArgumentError } from 'commander';
import type { z } from 'zod';
import { BACKEND_NAMES, BACKEND_PREFERENCES, ensureBackend, type BackendPreference } from '../backend.js';
import { resolveConfig, validateConfig } from '../config/load.js';
import { generateSchema, SCHEMAS } from '../config/schemas.js';
import type { CommandContext } from './context.js';
import { runCollect } from '../stages/collect.js';
import { runTrain } from '../stages/train.js';
import { runEvaluate } from '../stages/evaluate.js';
import { runExport, runVerify } from '../stages/export.js';
import { runPipeline } from '../stages/pipeline.js';
import { runPlan } from '../stages/plan.js';
import { runGenerate } from '../stages/generate.js';
import { MERGE_KINDS, runMerge, type MergeConfig } from '../stages/merge.js';
import type { StageResult } from '../stages/types.js';
import { defaultWorkers } from '../util/pool.js';

export type { StageResult } from '../stages/types.js';

export interface FlagDef {
  flags: string;
  description: string;
  /** dotted config key this flag sets */
  key?: string;
  parse?: (v: string) => unknown;
  choices?: string[];
}

export interface CommandDef {
  name: string;
  description: string;
  configurable: boolean;
  flags: FlagDef[];
  run(opts: Record<string, unknown>, ctx: CommandContext): Promise<void>;
}

const int = (v: string) => { const n = Number(v); return Number.isFinite(n) ? n : v; };
const list = (v: string) => {
  if (v.trim() === 'all') return 'all';
  const parts = v.split(',').map((s) => s.trim());
  if (parts.some((s) => s === '')) throw new InvalidArgumentError('empty entry: give comma-separated layer indices like 0,1,2, or "all"');
  return parts.map(int);
};
const BACKEND: FlagDef = { flags: '--backend <name>', description: `tfjs backend: auto (${BACKEND_NAMES.join(' > ')}), ${BACKEND_NAMES.join(', ')}`, key: 'backend', choices: [...BACKEND_PREFERENCES] };
const JSON_FLAG: FlagDef = { flags: '--json', description: 'print the result as JSON on stdout' };
/** --shard i/n (issue 26): shard i (0-based) of n of a data-parallel stage */
const SHARD: FlagDef = {
  flags: '--shard <i/n>', description: 'do only shard i of n (0-based) of this stage, into its own --out; join the n outputs with dejavu merge', key: 'shard',
  parse: (v: string) => {
    const m = /^(\d+)\/(\d+)$/.exec(v.trim());
    if (!m) throw new InvalidArgumentError('expected i/n, e.g. 0/3 (shard i of n, 0-based)');
    return { index: Number(m[1]), count: Number(m[2]) };
  },
};
/** pipeline past one machine (issue 26, src/stages/scale-out.ts) */
const SCALE_OUT: FlagDef[] = [
  { flags: '--scheduler <name>', description: 'write Slurm array jobs (slurm) or Kubernetes Indexed Jobs (k8s) for --shards N into WORKDIR/jobs', key: 'scaleOut.scheduler', choices: ['slurm', 'k8s'] },
  { flags: '--shards <n>', description: 'shards per data-parallel stage (with --scheduler or --step)', key: 'scaleOut.shards', parse: int },
  { flags: '--submit', description: 'with --scheduler slurm: submit the jobs and wait for them', key: 'scaleOut.submit' },
  { flags: '--step <step>', description: 'run one step of the written jobs (what each job runs)', key: 'scaleOut.step' },
  { ...SHARD, key: 'scaleOut.shard' },
];
const OVERWRITE: FlagDef = { flags: '--overwrite', description: 'replace an existing output folder made from different inputs', key: 'overwrite' };

function configured<K extends keyof typeof SCHEMAS>(name: K, description: string, flags: FlagDef[],
  stage: (cfg: z.infer<(typeof SCHEMAS)[K]>, ctx: CommandContext) => Promise<StageResult>): CommandDef {
  return {
    name, description, configurable: true, flags: [...flags, JSON_FLAG],
    async run(opts, ctx) {
      const mapped: Record<string, unknown> = {};
      for (const f of flags) {
        if (!f.key) continue;
        const prop = f.flags.split(/[ ,]/)[0]!.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
        if (opts[prop] !== undefined) mapped[f.key] = opts[prop];
      }
      const cfg = resolveConfig(SCHEMAS[name], name, { configFile: opts.config as string | undefined, flags: mapped, sets: opts.set as string[] | undefined });
      noteWorkerCap(cfg, ctx);
      const res = await stage(cfg as z.infer<(typeof SCHEMAS)[K]>, ctx);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text.endsWith('\n') ? res.text : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  };
}

/** A worker count above the cores (at any depth of the config: workers, train.workers...) is capped by the pool; say so. */
function noteWorkerCap(cfg: unknown, ctx: CommandContext, at = ''): void {
  if (!cfg || typeof cfg !== 'object') return;
  for (const [k, v] of Object.entries(cfg)) {
    const key = at ? `${at}.${k}` : k;
    if (k === 'workers' && typeof v === 'number' && v > defaultWorkers())
      ctx.io.stderr.write(`note: ${key === 'workers' ? '--workers' : key} ${v} is more than the ${defaultWorkers()} core(s) here: using ${defaultWorkers()}\n`);
    else noteWorkerCap(v, ctx, key);
  }
}

/** Stages that run a model print the backend they run on. */
async function withBackend(pref: BackendPreference, ctx: CommandContext): Promise<string> {
  const b = await ensureBackend(pref);
  ctx.deps.log(`backend: ${b.name} (${b.reason})`);
  return b.name;
}

export const COMMANDS: CommandDef[] = [
  configured('collect-activations', 'run the dense model on calibration text and record per-layer activations into Arrow IPC shards (streaming, resumable)', [
    { flags: '--model <dir>', description: 'Hugging Face checkpoint folder', key: 'model' },
    { flags: '--data <file>', description: 'JSONL (.jsonl, .ndjson, .json; any case) with "text" (or pre-tokenized "ids"), or plain text (one document); a regular file', key: 'data' },
    { flags: '--out <dir>', description: 'output dataset folder', key: 'out' },
    { flags: '--seq-len <n>', description: 'tokens per packed sequence (default 256)', key: 'seqLen', parse: int },
    { flags: '--max-tokens <n>', description: 'stop after this many tokens', key: 'maxTokens', parse: int },
    { flags: '--batch-size <n>', description: 'sequences per forward pass (default 8)', key: 'batchSize', parse: int },
    { flags: '--layers <list>', description: 'comma-separated layer indices, or "all"', key: 'layers', parse: list },
    { flags: '--dtype <dtype>', description: 'stored hidden-state dtype: float16 (default) or float32', key: 'dtype', choices: ['float16', 'float32'] },
    { flags: '--workers <n>', description: 'worker threads (0 = one per core; never more than the cores)', key: 'workers', parse: int },
    SHARD, OVERWRITE, BACKEND,
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runCollect(cfg, ctx.deps); }),
  configured('train-predictors', 'fit per-layer MLP-neuron and attention-head predictors, calibrate them to a target recall, and choose each layer\'s cheapest MLP mode', [
    { flags: '--activations <dir>', description: 'dataset from collect-activations', key: 'activations' },
    { flags: '--model <dir>', description: 'checkpoint (default: the one the activations were collected from)', key: 'model' },
    { flags: '--out <dir>', description: 'output predictors folder', key: 'out' },
    { flags: '--layers <list>', description: 'comma-separated layer indices, or "all"', key: 'layers', parse: list },
    { flags: '--workers <n>', description: 'worker threads (0 = one per core; never more than the cores)', key: 'workers', parse: int },
    SHARD, OVERWRITE, BACKEND,
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runTrain(cfg, ctx.deps); }),
  configured('evaluate-recall', 'held-out recall/precision/density per layer at the runtime selection rule, and perplexity dense vs oracle vs predicted sparsity', [
    { flags: '--activations <dir>', description: 'held-out dataset from collect-activations', key: 'activations' },
    { flags: '--predictors <dir>', description: 'folder from train-predictors', key: 'predictors' },
    { flags: '--model <dir>', description: 'checkpoint for the perplexity part', key: 'model' },
    { flags: '--data <file>', description: 'held-out text for perplexity', key: 'data' },
    { flags: '--out <dir>', description: 'report folder', key: 'out' },
    { flags: '--max-tokens <n>', description: 'tokens for the perplexity part', key: 'maxTokens', parse: int },
    { flags: '--workers <n>', description: 'worker threads (0 = one per core; never more than the cores)', key: 'workers', parse: int },
    SHARD, BACKEND,
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runEvaluate(cfg, ctx.deps); }),
  configured('plan', 'choose per-layer runtime modes (dense / lossless / predicted, head budget) for the fastest decode within a perplexity budget, verified by the runtime on held-out text', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--predictors <dir>', description: 'folder from train-predictors', key: 'predictors' },
    { flags: '--activations <dir>', description: 'held-out dataset from collect-activations', key: 'activations' },
    { flags: '--data <file>', description: 'held-out text (default: the activations\' data file)', key: 'data' },
    { flags: '--max-ppl-increase <x>', description: 'budget: largest perplexity increase over dense, as a fraction (default 0.01 = +1%)', key: 'maxPplIncrease', parse: int },
    { flags: '--out <dir>', description: 'plan folder', key: 'out' },
    SHARD, OVERWRITE, BACKEND,
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runPlan(cfg, ctx.deps); }),
  configured('export-bundle', 'write a versioned, checksummed sparse-runtime bundle (manifest, predictors, neuron-major weights)', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--predictors <dir>', description: 'folder from train-predictors', key: 'predictors' },
    { flags: '--report <dir>', description: 'folder from evaluate-recall (expected recall/density)', key: 'report' },
    { flags: '--plan <dir>', description: 'folder from plan (per-layer runtime modes, followed by generate)', key: 'plan' },
    { flags: '--out <dir>', description: 'bundle folder', key: 'out' },
    OVERWRITE,
  ], async (cfg, ctx) => runExport(cfg, ctx.deps)),
  configured('pipeline', 'collect (calibration + held-out), train, evaluate and export in one go, skipping stages whose outputs are complete and current', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--workdir <dir>', description: 'where stage outputs go', key: 'workdir' },
    ...SCALE_OUT,
    BACKEND,
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runPipeline(cfg, ctx.deps); }),
  {
    name: 'merge', description: 'join the output folders of a stage run as --shard 0/n .. n-1/n into what the unsharded stage writes', configurable: false,
    flags: [
      { flags: '--kind <kind>', description: 'which stage\'s shards', choices: [...MERGE_KINDS] },
      { flags: '--out <dir>', description: 'merged output folder' },
      { flags: '--inputs <dir...>', description: 'the shards\' output folders (every index once, any order)' },
      OVERWRITE, JSON_FLAG,
    ],
    async run(opts, ctx) {
      if (opts.kind === 'report' || opts.kind === 'plan') await withBackend('auto', ctx); // replayed through evaluate-recall / plan
      const res = await runMerge({ kind: opts.kind as MergeConfig['kind'], out: opts.out as string, inputs: opts.inputs as string[], overwrite: Boolean(opts.overwrite) }, ctx.deps);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  },
  {
    name: 'verify-bundle', description: 'check a bundle: schema, checksums, and (with --model) that it belongs to that checkpoint', configurable: false,
    flags: [{ flags: '--bundle <dir>', description: 'bundle folder' }, { flags: '--model <dir>', description: 'checkpoint the bundle must match' }, JSON_FLAG],
    async run(opts, ctx) {
      const res = await runVerify({ bundle: opts.bundle as string, model: opts.model as string | undefined }, ctx.deps);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  },
  {
    name: 'generate', description: 'generate text with a KV cache, dense or sparse with a bundle (only the predicted neurons and heads are computed)', configurable: false,
    flags: [
      { flags: '--model <dir>', description: 'checkpoint folder' },
      { flags: '--bundle <dir>', description: 'sparse bundle from export-bundle (dense without it)' },
      { flags: '--prompt <text...>', description: 'prompt text (repeat for a batch)' },
      { flags: '--max-tokens <n>', description: 'tokens to generate (default 40)', parse: int },
      { flags: '--temperature <t>', description: '0 = greedy (default); > 0 samples', parse: int },
      { flags: '--top-k <k>', description: 'sample from the k most likely tokens (with temperature > 0)', parse: int },
      { flags: '--seed <n>', description: 'sampling seed', parse: int },
      BACKEND, JSON_FLAG,
    ],
    async run(opts, ctx) {
      const flagOf = (dotted: string) => `--${dotted.split('.')[0]!.replace(/[A-Z]/g, (ch) => '-' + ch.toLowerCase())}`;
      const input: Record<string, unknown> = {};
      for (const k of ['model', 'bundle', 'prompt', 'maxTokens', 'temperature', 'topK', 'seed', 'backend']) if (opts[k] !== undefined) input[k] = opts[k];
      const cfg = validateConfig(generateSchema, input, 'generate', {
        title: 'generate flags', label: flagOf,
        hint: 'dejavu generate --model DIR --prompt TEXT [--bundle DIR] [--max-tokens N>=1] [--temperature T>=0 --top-k K>=0 --seed INT]',
      });
      await withBackend(cfg.backend, ctx);
      const res = await runGenerate(cfg, ctx.deps);
      for (const n of res.notes ?? []) ctx.io.stderr.write(`note: ${n}\n`);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  },
];
