/**
 * dejavu merge (issue 26): join the outputs of `--shard i/n` runs of a data-parallel stage into what the unsharded stage
 * writes. The shards must belong to one run (same identity), every index 0..n-1 must be there once, and every file is
 * checked against the sha256 its shard recorded; anything else is refused (exit 2) naming the shard.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { StageResult } from './types.js';
import type { StageDeps } from '../util/progress.js';
import { UserError } from '../util/errors.js';
import { beginOutput, inspectOutput, writeOutput } from '../util/outdir.js';
import { sha256, sha256File } from '../util/fsx.js';
import { activationsManifestSchema, activationsSummarySchema, layerDir, readManifest, readSummary, shardKey, shardName, type ActivationsManifest } from '../activations/dataset.js';
import { addBatch, layerSummaries, newStats, summarize, writeChecked, type ShardInfo } from './collect.js';
import { summarize as summarizePredictors } from './train.js';
import { predictorsManifestSchema, readPredictorsManifest, type PredictorsManifest } from '../predictors/store.js';
import { readJson, readSealedArtifact, writeArtifact } from '../util/json-artifact.js';
import type { z } from 'zod';
import { evalShardSchema, runEvaluate } from './evaluate.js';
import type { EvaluateConfig, PlanConfig } from '../config/schemas.js';
import { planShardSchema, runPlan } from './plan.js';

export const MERGE_KINDS = ['activations', 'predictors', 'report', 'plan'] as const;
export interface MergeConfig { kind: (typeof MERGE_KINDS)[number]; out: string; inputs: string[]; overwrite: boolean }

export async function runMerge(cfg: MergeConfig, deps: StageDeps): Promise<StageResult> {
  if (!cfg.kind) throw new UserError('merge needs the kind of shards (--kind)', `dejavu merge --kind ${MERGE_KINDS.join('|')} --out DIR --inputs SHARD_DIR...`);
  if (!cfg.out) throw new UserError('merge needs an output folder (--out)', 'dejavu merge --kind activations --out DIR --inputs SHARD_DIR...');
  if (!cfg.inputs?.length) throw new UserError('merge needs the shard folders (--inputs)', 'dejavu merge --kind activations --out DIR --inputs SHARD_DIR...');
  return cfg.kind === 'predictors' ? mergePredictors(cfg, deps) : cfg.kind === 'report' ? mergeReport(cfg, deps) : cfg.kind === 'plan' ? mergePlan(cfg, deps) : mergeActivations(cfg, deps);
}

type ShardManifest = ActivationsManifest & { shard: ShardInfo };
const tag = (s: { index: number; count: number }) => `shard ${s.index}/${s.count}`;

interface ShardOf<M> { dir: string; index: number; count: number; run: string; m: M }

/** The shards of one run (same `run` identity), every index 0..n-1 once; returned by index. */
function oneRun<M>(shards: ShardOf<M>[], stage: string): ShardOf<M>[] {
  const ref = shards[0]!;
  const byIndex = new Map<number, ShardOf<M>>();
  for (const s of shards) {
    if (s.run !== ref.run) throw new UserError(`foreign shard: ${s.dir} (${tag(s)}) is from a different run than ${ref.dir} (inputs or config differ)`, `merge only the shards of one ${stage} run (same flags and config, --shard 0/n .. n-1/n)`);
    if (s.count !== ref.count) throw new UserError(`${s.dir} is ${tag(s)} but ${ref.dir} is ${tag(ref)}: the runs were cut into different shard counts`, `merge the shards of one run, all made with the same --shard …/n`);
    const dup = byIndex.get(s.index);
    if (dup) throw new UserError(`${tag(s)} is given twice: ${dup.dir} and ${s.dir}`, 'pass each shard folder once');
    byIndex.set(s.index, s);
  }
  const n = ref.count;
  const missing = Array.from({ length: n }, (_, i) => i).filter((i) => !byIndex.has(i));
  if (missing.length) throw new UserError(`${missing.map((i) => tag({ index: i, count: n })).join(', ')} ${missing.length > 1 ? 'are' : 'is'} missing (given: ${[...byIndex.keys()].sort((a, b) => a - b).map((i) => `${i}/${n}`).join(', ')})`,
    `make ${missing.length > 1 ? 'them' : 'it'} (${stage} --shard ${missing[0]}/${n} --out DIR, same flags) and pass every shard folder`);
  return [...byIndex.keys()].sort((a, b) => a - b).map((i) => byIndex.get(i)!);
}

/** A shard folder of `kind` (made by dejavu, not the merge's own --out). */
function shardFolder(dir: string, out: string, kind: 'activations' | 'predictors' | 'report' | 'plan', stage: string): void {
  if (path.resolve(dir) === path.resolve(out)) throw new UserError(`--out ${out} is also one of the shards`, 'write the merged output to a new folder');
  const st = inspectOutput(dir, kind);
  if (st.state !== 'ours') throw new UserError(`${dir} is not ${kind === 'activations' ? 'an' : 'a'} ${kind} shard folder (${st.state === 'foreign' ? st.reason : 'it is empty or absent'})`, `pass the --out folders of the ${stage} --shard i/n runs`);
}

/** Read and check the activation shard folders: one run, every index once. Returns them by index. */
function readShards(inputs: string[], out: string): { dir: string; m: ShardManifest }[] {
  const shards = inputs.map((dir) => {
    shardFolder(dir, out, 'activations', 'collect-activations');
    const m = readManifest(dir, false) as ShardManifest;
    if (!m.shard) throw new UserError(`${dir} is not a shard: it was collected without --shard`, 'pass the --out folders of the collect-activations --shard i/n runs');
    if (m.status !== 'complete') throw new UserError(`${dir} (${tag(m.shard)}) is incomplete`, 're-run its collect-activations --shard command to finish it (it resumes)');
    return { dir, index: m.shard.index, count: m.shard.count, run: `${String(m.config.identity)} ${m.shard.runSequences}`, m };
  });
  return oneRun(shards, 'collect-activations');
}

async function mergeActivations(cfg: MergeConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const shards = readShards(cfg.inputs, cfg.out);
  const m0 = shards[0]!.m, n = m0.shard.count, layers = m0.layers;
  const runSequences = m0.shard.runSequences, total = Math.ceil(runSequences / m0.seqsPerShard);
  // each shard must hold exactly its dataset shards (s % n == index) and its batches must tile the run's sequences
  for (const { dir, m } of shards) {
    const want = Array.from({ length: total }, (_, s) => s).filter((s) => s % n === m.shard.index).flatMap((s) => layers.map((l) => shardKey(l, s)));
    const have = Object.keys(m.shardSha256 ?? {});
    if (m.shards !== want.length / layers.length || have.length !== want.length || want.some((k) => !(k in m.shardSha256!)))
      throw new UserError(`${dir} (${tag(m.shard)}) does not hold the dataset shards its index gets (${want.length / layers.length} of ${total}): its manifest lists ${have.length / layers.length}`, 're-run its collect-activations --shard command with --overwrite');
  }
  const batches = shards.flatMap((s) => s.m.shard.batches).sort((a, b) => a.firstSeq - b.firstSeq);
  let next = 0;
  for (const b of batches) {
    if (b.firstSeq !== next || b.rows % m0.seqLen || b.layers.length !== layers.length) throw new UserError(`the shards' batch records do not tile the run's ${runSequences} sequences (at sequence ${next})`, 're-collect the shards');
    next += b.rows / m0.seqLen;
  }
  if (next !== runSequences) throw new UserError(`the shards' batches cover ${next} of the run's ${runSequences} sequences`, 're-collect the shards');

  const id = String(m0.config.identity);
  const w = beginOutput(cfg.out, 'activations', {
    identity: sha256(id),
    mayReplace: (b) => { if (b.state === 'ours' && !cfg.overwrite) throw new UserError(`output folder ${cfg.out} already holds an activations dataset`, 'choose another --out, or pass --overwrite to replace it'); },
  });
  return writeOutput(w, cfg.out, (tmp) => {
    const shardSha256: Record<string, string> = {};
    for (const l of layers) fs.mkdirSync(layerDir(tmp, l));
    for (let s = 0; s < total; s++) {
      const { dir, m } = shards[s % n]!;
      for (const l of layers) {
        const key = shardKey(l, s), src = path.join(layerDir(dir, l), shardName(s)), dst = path.join(layerDir(tmp, l), shardName(s));
        if (!fs.existsSync(src)) throw new UserError(`${dir} (${tag(m.shard)}) is missing ${key}`, 're-run its collect-activations --shard command (it resumes)');
        fs.copyFileSync(src, dst);
        if (sha256File(dst) !== m.shardSha256![key]) throw new UserError(`${src} (${tag(m.shard)}) fails its sha256 check: it was modified or truncated`, 're-run its collect-activations --shard command with --overwrite');
        shardSha256[key] = m.shardSha256![key]!;
      }
    }
    // the manifest the unsharded run writes: the shard's, less its shard record, with the run's totals
    const { shard: _s, ...base } = m0;
    const done: ActivationsManifest = {
      ...base, config: { ...base.config, out: cfg.out, overwrite: cfg.overwrite },
      tokens: runSequences * m0.seqLen, sequences: runSequences, shards: total, shardSha256,
    };
    const stats = new Map(layers.map((l) => [l, newStats(m0.dims.heads)]));
    for (const b of batches) b.layers.forEach((bl, i) => addBatch(stats.get(layers[i]!)!, b.rows, bl));
    const parts = shards.map((s) => readSummary(s.dir) as { workers?: number; timing?: Record<string, number> } | null);
    const summary = {
      tokens: done.tokens, sequences: done.sequences, shards: done.shards, seconds: (Date.now() - t0) / 1000, tokensPerSecond: null,
      workers: parts.reduce((a, p) => a + (p?.workers ?? 1), 0),
      /** summed over the shards */
      timing: Object.fromEntries(['forwardMs', 'captureMs', 'writeMs'].map((k) => [k, parts.reduce((a, p) => a + (p?.timing?.[k] ?? 0), 0)])),
      resumedFromShard: 0, layers: layerSummaries(layers, stats, m0.dims.ffn),
    };
    writeChecked(path.join(tmp, 'summary.json'), activationsSummarySchema, summary);
    writeChecked(path.join(tmp, 'manifest.json'), activationsManifestSchema, done);
    deps.log(`merge: ${n} activation shards -> ${cfg.out}`);
    return done;
  }).then((done) => summarize(cfg.out, done));
}

type PredictorsShard = PredictorsManifest & { shard?: { index: number; count: number; layers: number[]; sha256: Record<string, string> } };

/** train-predictors --shard i/n outputs (layers i, i+n, ... each) -> the predictors folder of the unsharded run. */
async function mergePredictors(cfg: MergeConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const shards = oneRun(cfg.inputs.map((dir) => {
    shardFolder(dir, cfg.out, 'predictors', 'train-predictors');
    const m = readPredictorsManifest(dir) as PredictorsShard; // sealed: checked
    if (!m.shard) throw new UserError(`${dir} is not a shard: it was trained without --shard`, 'pass the --out folders of the train-predictors --shard i/n runs');
    // the run's identity is the shard's less its shard (the unsharded run's identity)
    const id = JSON.parse(m.identity) as { cfg: Record<string, unknown> };
    delete id.cfg.shard;
    return { dir, index: m.shard.index, count: m.shard.count, run: JSON.stringify(id) + JSON.stringify(m.shard.layers), m };
  }), 'train-predictors');
  const m0 = shards[0]!.m, sh0 = m0.shard!, n = sh0.count;
  for (const { dir, m } of shards) {
    const want = sh0.layers.filter((_, k) => k % n === m.shard!.index);
    if (m.layers.map((l) => l.layer).join() !== want.join()) throw new UserError(`${dir} (${tag(m.shard!)}) holds layers ${m.layers.map((l) => l.layer).join(', ')}, its index gets ${want.join(', ')}`, 're-run its train-predictors --shard command with --overwrite');
  }
  const run = shards[0]!.run, identity = run.slice(0, run.length - JSON.stringify(sh0.layers).length);
  const w = beginOutput(cfg.out, 'predictors', {
    identity: sha256(identity),
    mayReplace: (b) => { if (b.state === 'ours' && !cfg.overwrite) throw new UserError(`output folder ${cfg.out} already holds predictors`, 'choose another --out, or pass --overwrite to replace it'); },
  });
  await writeOutput(w, cfg.out, (tmp) => {
    const layers = shards.flatMap((s) => s.m.layers).sort((a, b) => a.layer - b.layer);
    const logs = new Map<number, string[]>();
    for (const { dir, m } of shards) {
      for (const l of m.layers) {
        const src = path.join(dir, l.file), dst = path.join(tmp, l.file);
        fs.copyFileSync(src, dst);
        if (sha256File(dst) !== m.shard!.sha256[l.file]) throw new UserError(`${src} (${tag(m.shard!)}) fails its sha256 check: it was modified or truncated`, 're-run its train-predictors --shard command with --overwrite');
      }
      for (const line of fs.readFileSync(path.join(dir, 'train-log.jsonl'), 'utf8').split('\n').filter(Boolean)) {
        const layer = (JSON.parse(line) as { layer?: unknown }).layer;
        if (typeof layer !== 'number' || !m.layers.some((l) => l.layer === layer)) throw new UserError(`${dir}/train-log.jsonl has a line of no layer of ${tag(m.shard!)}`, 're-run its train-predictors --shard command with --overwrite');
        logs.set(layer, [...(logs.get(layer) ?? []), line]);
      }
    }
    fs.writeFileSync(path.join(tmp, 'train-log.jsonl'), layers.flatMap((l) => logs.get(l.layer) ?? []).join('\n') + '\n');
    const { shard: _s, sealSha256: _seal, ...base } = m0 as PredictorsShard & { sealSha256?: string };
    const config: Record<string, unknown> = { ...(base.config as Record<string, unknown>), out: cfg.out, overwrite: cfg.overwrite };
    delete config.shard;
    const t = shards.map((s) => s.m.training);
    const manifest: PredictorsManifest = { ...base, identity, config: config as PredictorsManifest['config'], layers,
      training: { seconds: (Date.now() - t0) / 1000 + t.reduce((a, x) => a + x.seconds, 0), workers: t.reduce((a, x) => a + x.workers, 0),
        samplesPerSecond: t.reduce((a, x) => a + x.samplesPerSecond, 0) } };
    writeArtifact(predictorsManifestSchema, manifest, path.join(tmp, 'predictors.json'), 'predictors manifest', { seal: true });
  });
  deps.log(`merge: ${n} predictor shards -> ${cfg.out}`);
  return summarizePredictors(cfg.out, readPredictorsManifest(cfg.out));
}

/** evaluate-recall / plan --shard i/n outputs: each folder's sealed JSON of the shard kind, read through its schema, of one run */
function readShardFiles<S extends z.ZodType<{ shard: { index: number; count: number }; run: string }>>(cfg: MergeConfig, kind: 'report' | 'plan', file: string,
  shardKind: string, schema: S, stage: string, made: string): ShardOf<z.output<S>>[] {
  const hint = `pass the --out folders of the ${stage} --shard i/n runs`;
  return oneRun(cfg.inputs.map((dir) => {
    shardFolder(dir, cfg.out, kind, stage);
    const f = path.join(dir, file);
    const raw = fs.existsSync(f) ? readJson(f, hint) as { kind?: unknown } | null : null;
    if (raw?.kind !== shardKind) throw new UserError(`${dir} is not a shard: it was ${made} without --shard`, hint);
    const m = readSealedArtifact(schema, f, `${stage} shard`, `re-run its ${stage} --shard command`);
    return { dir, index: m.shard.index, count: m.shard.count, run: m.run, m };
  }), stage);
}

/** evaluate-recall --shard i/n outputs (their jobs' results) -> the report of the unsharded run, replayed from them. */
async function mergeReport(cfg: MergeConfig, deps: StageDeps): Promise<StageResult> {
  const shards = readShardFiles(cfg, 'report', 'report.json', 'dejavu-evaluation-shard', evalShardSchema, 'evaluate-recall', 'evaluated');
  const replay = new Map<string, unknown>();
  for (const { m } of shards) for (const [k, v] of Object.entries(m.results)) replay.set(k, v);
  const config: Record<string, unknown> = { ...shards[0]!.m.config, out: cfg.out };
  delete config.shard;
  if (fs.existsSync(path.join(cfg.out, 'report.json')) && !cfg.overwrite) throw new UserError(`output folder ${cfg.out} already holds a report`, 'choose another --out, or pass --overwrite to replace it');
  deps.log(`merge: ${shards.length} evaluate-recall shards -> ${cfg.out} (the report replayed from their ${replay.size} job results)`);
  return runEvaluate(config as EvaluateConfig, deps, replay);
}

/** plan --shard i/n outputs (single-layer perplexities of their layers) -> the plan of the unsharded run: the search
 * and the verification run here, with those perplexities replayed */
async function mergePlan(cfg: MergeConfig, deps: StageDeps): Promise<StageResult> {
  const shards = readShardFiles(cfg, 'plan', 'plan.json', 'dejavu-plan-shard', planShardSchema, 'plan', 'planned');
  const replay: Record<string, number> = Object.assign({}, ...shards.map((s) => s.m.dppl));
  const config: Record<string, unknown> = { ...shards[0]!.m.config, out: cfg.out, overwrite: cfg.overwrite };
  delete config.shard;
  deps.log(`merge: ${shards.length} plan shards -> ${cfg.out} (${Object.keys(replay).length} single-layer perplexities; search and verification here)`);
  return runPlan(config as PlanConfig, deps, replay);
}
