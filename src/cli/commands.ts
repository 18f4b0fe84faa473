/** Command table: flags map onto config keys (dotted paths); the stage does the work. */
import * as path from 'node:path';
import { InvalidArgumentError } from 'commander';
import YAML from 'yaml';
import type { z } from 'zod';
import { BACKEND_NAMES, BACKEND_PREFERENCES, ensureBackend, type BackendPreference } from '../backend.js';
import { resolveConfig, validateConfig, type Obj } from '../config/load.js';
import { UserError } from '../util/errors.js';
import { generateSchema, pipelineSchema, SCHEMAS } from '../config/schemas.js';
import type { CommandContext } from './context.js';
import { runCollect } from '../stages/collect.js';
import { runTrain } from '../stages/train.js';
import { runEvaluate } from '../stages/evaluate.js';
import { runExport, runVerify } from '../stages/export.js';
import { runPipeline } from '../stages/pipeline.js';
import { runPlan } from '../stages/plan.js';
import { runGenerate } from '../stages/generate.js';
import { estimateTokens, runEstimate } from '../stages/estimate.js';
import { withApproximateTotal } from '../util/progress.js';
import { MERGE_KINDS, runMerge, type MergeConfig } from '../stages/merge.js';
import type { StageResult } from '../stages/types.js';
import { defaultWorkers } from '../util/pool.js';
import { defaultWorkdir } from '../stages/workdir.js';
import { modelDefaults } from '../stages/model-defaults.js';

export type { StageResult } from '../stages/types.js';

/** every dotted key of a config object type: 'seqLen', 'plan.maxPplIncrease', 'data.heldout' (arrays are leaves) */
export type ConfigKey<T> = T extends readonly unknown[] ? never : T extends object
  ? { [K in keyof T & string]-?: K | `${K}.${ConfigKey<NonNullable<T[K]>>}` }[keyof T & string] : never;

/** A flag; `key` is a dotted key of the command's schema, checked by the compiler (a typo or a key the command lacks does not build). */
export interface FlagDef<Key extends string = string> {
  flags: string;
  description: string;
  /** dotted config key this flag sets */
  key?: Key;
  parse?: (v: string) => unknown;
  choices?: readonly string[];
}

export interface CommandDef {
  name: string;
  description: string;
  configurable: boolean;
  flags: FlagDef[];
  /** help examples (each one runs: test/help-examples.test.ts) */
  examples: string[];
  run(opts: Record<string, unknown>, ctx: CommandContext): Promise<void>;
}

const int = (v: string) => { const n = Number(v); return Number.isFinite(n) ? n : v; };
const list = (v: string) => {
  if (v.trim() === 'all') return 'all';
  const parts = v.split(',').map((s) => s.trim());
  if (parts.some((s) => s === '')) throw new InvalidArgumentError('empty entry: give comma-separated layer indices like 0,1,2, or "all"');
  return parts.map(int);
};
const BACKEND: FlagDef<'backend'> = { flags: '--backend <name>', description: `tfjs backend: auto (${BACKEND_NAMES.join(' > ')}), ${BACKEND_NAMES.join(', ')}`, key: 'backend', choices: [...BACKEND_PREFERENCES] };
const JSON_FLAG: FlagDef = { flags: '--json', description: 'print the result as JSON on stdout' };
/** --shard i/n (issue 26): shard i (0-based) of n of a data-parallel stage */
const SHARD: FlagDef<'shard'> = {
  flags: '--shard <i/n>', description: 'do only shard i of n (0-based) of this stage, into its own --out; join the n outputs with dejavu merge', key: 'shard',
  parse: (v: string) => {
    const m = /^(\d+)\/(\d+)$/.exec(v.trim());
    if (!m) throw new InvalidArgumentError('expected i/n, e.g. 0/3 (shard i of n, 0-based)');
    return { index: Number(m[1]), count: Number(m[2]) };
  },
};
/** pipeline past one machine (issue 26, src/stages/scale-out.ts) */
const SCALE_OUT: FlagDef<Extract<ConfigKey<z.input<typeof pipelineSchema>>, `scaleOut.${string}`>>[] = [
  { flags: '--scheduler <name>', description: 'write Slurm array jobs (slurm) or Kubernetes Indexed Jobs (k8s) for --shards N into WORKDIR/jobs', key: 'scaleOut.scheduler', choices: ['slurm', 'k8s'] },
  { flags: '--shards <n>', description: 'shards per data-parallel stage (with --scheduler or --step)', key: 'scaleOut.shards', parse: int },
  { flags: '--submit', description: 'with --scheduler slurm: submit the jobs and wait for them', key: 'scaleOut.submit' },
  { flags: '--step <step>', description: 'run one step of the written jobs (what each job runs)', key: 'scaleOut.step' },
  { ...SHARD, key: 'scaleOut.shard' },
];
const OVERWRITE: FlagDef<'overwrite'> = { flags: '--overwrite', description: 'replace an existing output folder made from different inputs', key: 'overwrite' };

/** A stage command's section in a pipeline config, and the pipeline's workdir folders it reads (by config key). */
export const STAGE_SECTIONS: Record<string, { section: string; data?: 'calibration' | 'heldout'; inputs: Record<string, string> }> = {
  'collect-activations': { section: 'collect', data: 'calibration', inputs: {} },
  'train-predictors': { section: 'train', inputs: { activations: 'activations-calibration' } },
  'evaluate-recall': { section: 'evaluate', data: 'heldout', inputs: { activations: 'activations-heldout', predictors: 'predictors' } },
  plan: { section: 'plan', data: 'heldout', inputs: { activations: 'activations-heldout', predictors: 'predictors' } },
  'export-bundle': { section: 'export', inputs: { predictors: 'predictors', report: 'report', plan: 'plan' } },
};
/**
 * Is this YAML mapping a pipeline config (and not `command`'s own stage config)? It is when it has a key only a
 * pipeline config has (workdir, a stage section, data as calibration + held-out) and none only the stage has; a mix
 * is left to the stage's schema, which names the keys it does not know.
 */
export function isPipelineConfig(raw: Obj, command: string): boolean {
  if (command === 'pipeline') return false;
  const own = Object.keys(SCHEMAS[command as keyof typeof SCHEMAS]?.shape ?? {}), pipe = Object.keys(pipelineSchema.shape);
  const keys = Object.keys(raw);
  const pipelineOnly = keys.some((k) => pipe.includes(k) && !own.includes(k)) || (typeof raw.data === 'object' && raw.data !== null && !Array.isArray(raw.data));
  return pipelineOnly && !keys.some((k) => own.includes(k) && !pipe.includes(k));
}

/**
 * A pipeline config given to a stage command: its section (e.g. `plan:`), the top-level model, backend and data (the
 * calibration file for collect, the held-out one for evaluate and plan), and the pipeline's folders as the stage's
 * inputs (predictors, activations... in the workdir); the output folder stays the user's to name.
 */
export function stageFromPipeline(raw: Obj, command: string, note: (m: string) => void): Obj {
  const s = STAGE_SECTIONS[command];
  if (!s) return raw;
  validateConfig(pipelineSchema.partial(), raw, 'pipeline'); // every section, every key: nothing in the file is ignored unread
  const sec = raw[s.section];
  const { enabled: _, ...own } = sec && typeof sec === 'object' && !Array.isArray(sec) ? sec as Obj : {};
  const out: Obj = { ...own };
  const shape = SCHEMAS[command as keyof typeof SCHEMAS].shape;
  for (const k of ['model', 'backend']) if (raw[k] !== undefined && Object.hasOwn(shape, k)) out[k] = raw[k];
  const d = raw.data;
  if (s.data && d !== undefined) {
    if (typeof d === 'string') { if (s.data === 'calibration') out.data = d; }
    else if (d && typeof d === 'object') out.data = (d as Obj)[s.data];
  }
  const model = typeof raw.model === 'string' ? raw.model : undefined;
  const w = typeof raw.workdir === 'string' ? raw.workdir : model ? defaultWorkdir(model) : undefined;
  if (w) for (const [k, dir] of Object.entries(s.inputs)) {
    if (k === 'plan' && (raw.plan as Obj | undefined)?.enabled === false) continue; // the pipeline makes no plan then
    out[k] = path.join(w, dir);
  }
  note(`a pipeline config: using its ${s.section}: section, ${['model', 'data', 'backend'].filter((k) => out[k] !== undefined).join(', ') || 'nothing else'} and, from its workdir ${w ?? '(none)'}, ${Object.keys(s.inputs).filter((k) => out[k] !== undefined).join(', ') || 'no inputs'}`);
  return out;
}

/** --data FILE --heldout FILE: the two parts (data.calibration, data.heldout); --data alone: one file to split */
const pipelineDataFlags = (m: Obj): Obj => {
  if (m['data.heldout'] === undefined || typeof m.data !== 'string') return m;
  const { data, ...rest } = m;
  return { ...rest, 'data.calibration': data };
};

function configured<K extends keyof typeof SCHEMAS>(name: K, description: string, flags: FlagDef<ConfigKey<z.input<(typeof SCHEMAS)[K]>>>[], examples: string[],
  stage: (cfg: z.infer<(typeof SCHEMAS)[K]>, ctx: CommandContext) => Promise<StageResult>,
  mapFlags: (m: Obj) => Obj = (m) => m): CommandDef {
  return {
    name, description, configurable: true, flags: [...flags, JSON_FLAG], examples,
    async run(opts, ctx) {
      const mapped: Obj = {};
      for (const f of flags) {
        if (!f.key) continue;
        const prop = f.flags.split(/[ ,]/)[0]!.replace(/^--/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
        if (opts[prop] !== undefined) mapped[f.key] = opts[prop];
      }
      const section = STAGE_SECTIONS[name]?.section;
      const cfg = resolveConfig(SCHEMAS[name], name, {
        configFile: opts.config as string | undefined, flags: mapFlags(mapped), sets: opts.set as string[] | undefined,
        adaptFile: (raw) => isPipelineConfig(raw, name) ? stageFromPipeline(raw, name, (m) => ctx.io.stderr.write(`note: ${opts.config as string} is ${m}\n`)) : raw,
        ...(section ? { setPrefix: `${section}.` } : {}),
        defaults: (obj) => modelDefaults(name, obj),
      });
      if (opts.printConfig) { ctx.io.stdout.write(YAML.stringify(cfg)); ctx.exit(0); return; }
      noteWorkerCap(cfg, ctx);
      const res = await stage(cfg as z.infer<(typeof SCHEMAS)[K]>, { ...ctx, opts });
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
  ], [
    'dejavu collect-activations --model checkpoints/opt-fixture --data data/calibration.jsonl --out runs/acts --max-tokens 4096',
    'dejavu collect-activations --config configs/default.yaml --out runs/acts-calibration --set collect.seqLen=128',
  ], async (cfg, ctx) => {
    await withBackend(cfg.backend, ctx);
    // collect streams its text and knows no total without --max-tokens: the estimate's token count (file size x bytes per token) stands in, shown as ~N
    const tokens = () => estimateTokens(cfg.model, { data: { calibration: cfg.data, heldout: cfg.data }, collect: { maxTokens: cfg.maxTokens }, heldoutCollect: {} }).calibration;
    return runCollect(cfg, withApproximateTotal(ctx.deps, tokens));
  }),
  configured('train-predictors', 'fit per-layer MLP-neuron and attention-head predictors, calibrate them to a target recall, and choose each layer\'s cheapest MLP mode', [
    { flags: '--activations <dir>', description: 'dataset from collect-activations', key: 'activations' },
    { flags: '--model <dir>', description: 'checkpoint (default: the one the activations were collected from)', key: 'model' },
    { flags: '--out <dir>', description: 'output predictors folder', key: 'out' },
    { flags: '--layers <list>', description: 'comma-separated layer indices, or "all"', key: 'layers', parse: list },
    { flags: '--workers <n>', description: 'worker threads (0 = one per core; never more than the cores)', key: 'workers', parse: int },
    SHARD, OVERWRITE, BACKEND,
  ], [
    'dejavu train-predictors --activations runs/acts --out runs/predictors --set mlp.targetRecall=0.98',
    "dejavu train-predictors --config configs/default.yaml --out runs/predictors-r4 --set 'train.mlp.ranks=[0.25]'",
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
  ], [
    'dejavu evaluate-recall --activations runs/acts-heldout --predictors runs/predictors --model checkpoints/opt-fixture --out runs/report',
    'dejavu evaluate-recall --config configs/default.yaml --out runs/report-2 --set evaluate.maxTokens=2048',
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runEvaluate(cfg, ctx.deps); }),
  configured('plan', 'choose per-layer runtime modes (dense / lossless / predicted, head budget) for the fastest decode within a perplexity budget, verified by the runtime on held-out text', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--predictors <dir>', description: 'folder from train-predictors', key: 'predictors' },
    { flags: '--activations <dir>', description: 'held-out dataset from collect-activations', key: 'activations' },
    { flags: '--data <file>', description: 'held-out text (default: the activations\' data file)', key: 'data' },
    { flags: '--max-ppl-increase <x>', description: 'budget: largest perplexity increase over dense, as a fraction (default 0.01 = +1%)', key: 'maxPplIncrease', parse: int },
    { flags: '--out <dir>', description: 'plan folder', key: 'out' },
    { flags: '--runtime <name>', description: 'price the plan for the cpu (default) or gpu decode runtime\'s kernels', key: 'runtime', choices: ['cpu', 'gpu'] },
    SHARD, OVERWRITE, BACKEND,
  ], [
    'dejavu plan --config configs/default.yaml --max-ppl-increase 0.02 --out runs/plan-2pct',
    "dejavu plan --model checkpoints/opt-fixture --predictors runs/default/predictors --activations runs/default/activations-heldout --out runs/plan --set 'plan.recalls=[0.95,0.99]'",
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runPlan(cfg, ctx.deps); }),
  configured('export-bundle', 'write a versioned, checksummed sparse-runtime bundle (manifest, predictors, neuron-major weights)', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--predictors <dir>', description: 'folder from train-predictors', key: 'predictors' },
    { flags: '--report <dir>', description: 'folder from evaluate-recall (expected recall/density)', key: 'report' },
    { flags: '--plan <dir>', description: 'folder from plan (per-layer runtime modes, followed by generate)', key: 'plan' },
    { flags: '--out <dir>', description: 'bundle folder', key: 'out' },
    OVERWRITE,
  ], [
    'dejavu export-bundle --config configs/default.yaml --plan runs/plan-2pct --out runs/bundle-2pct',
    'dejavu export-bundle --model checkpoints/opt-fixture --predictors runs/default/predictors --out runs/bundle-row-major --set export.neuronMajor=false',
  ], async (cfg, ctx) => runExport(cfg, ctx.deps)),
  configured('pipeline', 'collect (calibration + held-out), train, evaluate and export in one go, skipping stages whose outputs are complete and current', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--data <file>', description: 'text to calibrate on (JSONL or plain text); without --heldout its last 10% of documents are held out (recorded in WORKDIR/split.json)', key: 'data' },
    { flags: '--heldout <file>', description: 'held-out text for evaluation and the plan (with --data)', key: 'data.heldout' },
    { flags: '--workdir <dir>', description: 'where stage outputs go (default: runs/<the model folder\'s name>)', key: 'workdir' },
    { flags: '--max-ppl-increase <x>', description: 'the plan\'s budget: largest perplexity increase over dense, as a fraction (default 0.01 = +1%)', key: 'plan.maxPplIncrease', parse: int },
    { flags: '--verbose', description: 'also print the per-layer tables of report.md and plan/report.md (stdout is the verdict alone otherwise)' },
    ...SCALE_OUT,
    BACKEND,
  ], [
    'dejavu pipeline --config configs/default.yaml',
    'dejavu pipeline --model checkpoints/llama-fixture --data data/calibration.jsonl',
    'dejavu pipeline --model checkpoints/opt-fixture --data data/calibration.jsonl --heldout data/heldout.jsonl --max-ppl-increase 0.02 --workdir runs/budget-2pct',
    "dejavu pipeline --config configs/default.yaml --workdir runs/r4 --set 'train.mlp.ranks=[0.25]'",
  ], async (cfg, ctx) => { await withBackend(cfg.backend, ctx); return runPipeline(cfg, ctx.deps, { verbose: Boolean(ctx.opts?.verbose) }); },
  pipelineDataFlags),
  configured('estimate', 'what a pipeline on this model costs here, before it runs: activation disk, host and GPU memory, time per stage per backend available (at a matmul rate measured now)', [
    { flags: '--model <dir>', description: 'checkpoint folder', key: 'model' },
    { flags: '--data <file>', description: 'the text the pipeline would take (its size and measured bytes per token; 1M calibration tokens without it)', key: 'data' },
    { flags: '--heldout <file>', description: 'held-out text (with --data)', key: 'data.heldout' },
    BACKEND,
  ], [
    'dejavu estimate --model checkpoints/opt-fixture --data data/calibration.jsonl',
    'dejavu estimate --config configs/llama-fixture.yaml --set collect.maxTokens=100000',
    'dejavu estimate --model checkpoints/llama-2-7b-config',
  ], async (cfg) => runEstimate(cfg, { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) }), pipelineDataFlags),
  {
    name: 'merge', description: 'join the output folders of a stage run as --shard 0/n .. n-1/n into what the unsharded stage writes', configurable: false,
    flags: [
      { flags: '--kind <kind>', description: 'which stage\'s shards', choices: [...MERGE_KINDS] },
      { flags: '--out <dir>', description: 'merged output folder' },
      { flags: '--inputs <dir...>', description: 'the shards\' output folders (every index once, any order)' },
      OVERWRITE, JSON_FLAG,
    ],
    examples: ['dejavu merge --kind activations --out runs/acts --inputs runs/acts-0 runs/acts-1 runs/acts-2'],
    async run(opts, ctx) {
      const input = { kind: opts.kind as MergeConfig['kind'], out: opts.out as string, inputs: opts.inputs as string[], overwrite: Boolean(opts.overwrite) };
      if (opts.printConfig) { ctx.io.stdout.write(YAML.stringify(input)); ctx.exit(0); return; }
      if (opts.kind === 'report' || opts.kind === 'plan') await withBackend('auto', ctx); // replayed through evaluate-recall / plan
      const res = await runMerge(input, ctx.deps);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  },
  {
    name: 'verify-bundle', description: 'check a bundle: schema, checksums, and (with --model) that it belongs to that checkpoint', configurable: false,
    flags: [{ flags: '--bundle <dir>', description: 'bundle folder' }, { flags: '--model <dir>', description: 'checkpoint the bundle must match' }, JSON_FLAG],
    examples: ['dejavu verify-bundle --bundle runs/default/bundle --model checkpoints/opt-fixture'],
    async run(opts, ctx) {
      if (typeof opts.bundle !== 'string') throw new UserError('verify-bundle: --bundle is required', 'dejavu verify-bundle --bundle DIR [--model DIR]');
      const input = { bundle: opts.bundle, model: opts.model as string | undefined };
      if (opts.printConfig) { ctx.io.stdout.write(YAML.stringify(input)); ctx.exit(0); return; }
      const res = await runVerify(input, ctx.deps);
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
      { flags: '--dtype <format>', description: 'decode weights: auto (the checkpoint\'s half precision, else float32), float32, float16, bfloat16, q8_0 (8-bit; its cost is in the plan\'s report)' },
      { flags: '--threads <n>', description: 'threads for the decode kernels: a count or auto (default: measured at load)', parse: int },
      { flags: '--kernels <name>', description: 'decode row kernels: auto (default: native where built), native (AVX2 / FMA / F16C), wasm (WebAssembly SIMD)' },
      { flags: '--runtime <name>', description: 'decode runtime: cpu (default) or gpu (WebGPU; greedy)' },
      BACKEND, JSON_FLAG,
    ],
    examples: [
      "dejavu generate --model checkpoints/opt-fixture --prompt 'Call me Ishmael.' --max-tokens 20",
      "dejavu generate --model checkpoints/llama-fixture --prompt 'Call me Ishmael.' --dtype q8_0 --threads 2",
      "dejavu generate --model checkpoints/opt-fixture --bundle runs/default/bundle --prompt 'The whale' --temperature 0.8 --top-k 40 --seed 1",
    ],
    async run(opts, ctx) {
      const flagOf = (dotted: string) => `--${dotted.split('.')[0]!.replace(/[A-Z]/g, (ch) => '-' + ch.toLowerCase())}`;
      const input: Record<string, unknown> = {};
      for (const k of ['model', 'bundle', 'prompt', 'maxTokens', 'temperature', 'topK', 'seed', 'dtype', 'threads', 'kernels', 'runtime', 'backend']) if (opts[k] !== undefined) input[k] = opts[k];
      const cfg = validateConfig(generateSchema, input, 'generate', {
        title: 'generate flags', label: flagOf,
        hint: 'dejavu generate --model DIR --prompt TEXT [--bundle DIR] [--max-tokens N>=1] [--temperature T>=0 --top-k K>=0 --seed INT] [--dtype auto|float32|float16|bfloat16|q8_0] [--threads N|auto] [--kernels auto|native|wasm] [--runtime cpu|gpu]',
      });
      if (opts.printConfig) { ctx.io.stdout.write(YAML.stringify(cfg)); ctx.exit(0); return; }
      await withBackend(cfg.backend, ctx);
      const res = await runGenerate(cfg, ctx.deps);
      for (const n of res.notes ?? []) ctx.io.stderr.write(`note: ${n}\n`);
      ctx.io.stdout.write(opts.json ? JSON.stringify(res.json, null, 2) + '\n' : res.text + '\n');
      ctx.exit(res.code ?? 0);
    },
  },
];
