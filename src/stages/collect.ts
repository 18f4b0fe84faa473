/**
 * collect-activations: dense forward passes over packed calibration text; per layer, one Arrow row per token.
 * Streaming (one shard per layer in flight), resumable (progress.json names the complete shards), atomic renames.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { StageResult } from './types.js';
import { VERSION } from '../version.js';
import type { CollectConfig } from '../config/schemas.js';
import { fingerprintCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import { ACTIVATIONS_FORMAT_VERSION, layerSchema, makeBatch, REBUILD_HINT, ShardWriter, type LayerRows } from '../activations/format.js';
import { collectProgressSchema, layerDir, readManifest, readSummary, shardKey, shardName, type ActivationsManifest } from '../activations/dataset.js';
import { issueLines } from '../util/json-artifact.js';
import { loadModel } from '../model/model.js';
import { forward, disposeOutput } from '../model/forward.js';
import { loadTokenizer } from '../tokenizer.js';
import { fsUserError, UserError } from '../util/errors.js';
import { checkOutput, lockOutput, MARKER, sweepAtomicTemps, writeMarker } from '../util/outdir.js';
import { sha256, sha256File, writeJsonAtomic } from '../util/fsx.js';
import { f32ToF16Array } from '../util/half.js';
import type { StageDeps } from '../util/progress.js';

interface LayerStats { tokens: number; active: number; headNormSum: number[]; headNormSq: number[]; actAbsSum: number }
/** per complete shard: its files' sha256, and the token count and layer stats after it (so a resume can roll back) */
interface ShardRecord { sha256: Record<string, string>; tokens: number; stats: Record<string, LayerStats> }
interface Progress { shardsDone: number; tokens: number; seconds: number; shards: ShardRecord[] }

/** What makes two collections the same (resume) or different (refuse without --overwrite). */
function identity(cfg: CollectConfig, m: { fingerprint: unknown; tokenizerHash: string | null; dataHash: string }) {
  const { overwrite: _o, backend: _b, out: _out, ...rest } = cfg;
  return JSON.stringify({ ...rest, ...m });
}

export async function runCollect(cfg: CollectConfig, deps: StageDeps): Promise<StageResult> {
  const t0 = Date.now();
  const fingerprint = fingerprintCheckpoint(cfg.model);
  const pretok = await isPretokenized(cfg.data);
  const tokenizer = pretok ? null : loadTokenizer(cfg.model);
  const dataHash = sha256File(cfg.data);
  const model = loadModel(cfg.model);
  try {
    const c = model.config;
    const layers = cfg.layers === 'all' ? Array.from({ length: c.layers }, (_, i) => i) : [...new Set(cfg.layers)].sort((a, b) => a - b);
    for (const l of layers) if (l >= c.layers) throw new UserError(`layer ${l} does not exist: the model has ${c.layers} layers (0..${c.layers - 1})`, 'fix --layers');
    const mlpAct = cfg.recordMlpAct === 'auto' ? c.activation !== 'relu' : cfg.recordMlpAct;
    const seqsPerShard = Math.max(cfg.batchSize, Math.floor(cfg.rowsPerShard / cfg.seqLen / cfg.batchSize) * cfg.batchSize);
    const fields = ['seq', 'pos', 'x_attn', 'x_mlp', 'mlp_active', ...(mlpAct ? ['mlp_act'] : []), 'head_norm'];
    const id = identity(cfg, { fingerprint, tokenizerHash: tokenizer?.hash ?? null, dataHash });

    // --- output folder: new, resume, or refuse (src/util/outdir.ts: marker, lock, only our own folders)
    const out = cfg.out;
    const lock = lockOutput(out);
    let aside: string | null = null; // the dataset --overwrite replaces, kept until the new one is complete
    let createdHere = false, startedEmpty = false;
    try {
      const before = checkOutput(out, 'activations');
      let progress: Progress = { shardsDone: 0, tokens: 0, seconds: 0, shards: [] };
      if (before.state === 'ours' && fs.existsSync(path.join(out, 'manifest.json'))) {
        let old: ActivationsManifest | null = null;
        try { old = readManifest(out, false); } catch { old = null; }
        const same = old && (old.config as { identity?: string }).identity === id && sameFingerprint(old.model.fingerprint, fingerprint);
        if (same && old!.status === 'complete') {
          deps.log(`collect-activations: ${out} is complete and current; nothing to do`);
          return summarize(out, old!);
        }
        if (same) {
          progress = verifiedProgress(out, layers, deps.log);
          deps.log(`collect-activations: resuming ${out} after ${progress.shardsDone} complete shard(s) (${progress.tokens} tokens)`);
        } else if (!cfg.overwrite) {
          throw new UserError(`output folder ${out} holds activations from a different model, data or config`, 'choose another --out, or pass --overwrite to replace it');
        } else {
          aside = path.join(path.dirname(path.resolve(out)), `.${path.basename(path.resolve(out))}.dejavu-old-${process.pid}`);
          if (before.legacy) writeMarker(out, 'activations'); // a leftover of a kill -9 must be recognizable as ours to be swept
          fs.renameSync(out, aside);
        }
      } else if (before.state === 'ours' && !cfg.overwrite && fs.readdirSync(out).some((f) => f !== MARKER)) {
        throw new UserError(`output folder ${out} holds an unfinished activations dataset without manifest.json`, 'pass --overwrite to replace it, or choose another --out');
      }
      createdHere = !fs.existsSync(out);
      startedEmpty = createdHere || before.state === 'empty' || !!aside || progress.shardsDone === 0;
      fs.mkdirSync(out, { recursive: true });
      writeMarker(out, 'activations', sha256(id));
      sweepAtomicTemps(out);
      for (const l of layers) {
        const ld = layerDir(out, l);
        fs.mkdirSync(ld, { recursive: true });
        // drop shards past the last complete one, and temp files of a killed run
        for (const f of fs.readdirSync(ld)) {
          const m = /^shard-(\d+)\.arrow$/.exec(f);
          if (!m || Number(m[1]) >= progress.shardsDone) fs.rmSync(path.join(ld, f), { force: true });
        }
      }
      const resumedFromShard = progress.shardsDone;
      const manifest: ActivationsManifest = {
        formatVersion: ACTIVATIONS_FORMAT_VERSION, kind: 'dejavu-activations', toolVersion: VERSION, status: 'in-progress',
        config: { ...cfg, identity: id, resolved: { mlpAct, seqsPerShard } },
        model: { dir: cfg.model, fingerprint, config: c }, tokenizerHash: tokenizer?.hash ?? null,
        data: { file: cfg.data, sha256: dataHash }, seqLen: cfg.seqLen, seqsPerShard, layers,
        dims: { hidden: c.hidden, ffn: c.ffn, heads: c.heads, headDim: c.headDim }, dtype: cfg.dtype, fields,
        tokens: 0, sequences: 0, shards: 0,
      };
      writeJsonAtomic(path.join(out, 'manifest.json'), manifest);

      const schemas = new Map(layers.map((l) => [l, layerSchema({ layer: l, hidden: c.hidden, ffn: c.ffn, heads: c.heads, dtype: cfg.dtype, mlpAct })]));
      const stats = new Map(layers.map((l) => [l, (progress.shards.at(-1)?.stats[l] && structuredClone(progress.shards.at(-1)!.stats[l]!)) ?? { tokens: 0, active: 0, headNormSum: new Array(c.heads).fill(0), headNormSq: new Array(c.heads).fill(0), actAbsSum: 0 }]));
      const total = cfg.maxTokens ?? NaN;
      const bar = deps.progress('collect', Number.isFinite(total) ? total : 0, 'tok');
      let seqIndex = 0;
      let shardIndex = 0;
      let writers: Map<number, ShardWriter> | null = null;
      let tokens = progress.tokens;
      const skipSeqs = progress.shardsDone * seqsPerShard;
      let batch: number[][] = [];
      const tRun = Date.now();
      let forwardMs = 0, captureMs = 0, writeMs = 0;

      const openShard = () => new Map(layers.map((l) => [l, new ShardWriter(path.join(layerDir(out, l), `.${shardName(shardIndex)}.tmp`))]));
      const finishShard = async () => {
        if (!writers) return;
        const sums: Record<string, string> = {};
        for (const [l, w] of writers) {
          await w.close();
          sums[shardKey(l, shardIndex)] = w.sha256;
          fs.renameSync(w.file, path.join(layerDir(out, l), shardName(shardIndex)));
        }
        writers = null;
        shardIndex++;
        progress = { shardsDone: shardIndex, tokens, seconds: progress.seconds, shards: [...progress.shards, { sha256: sums, tokens, stats: structuredClone(Object.fromEntries(stats)) }] };
        writeJsonAtomic(path.join(out, 'progress.json'), progress);
      };
      const runBatch = async (seqs: number[][], firstSeq: number) => {
        let s = performance.now();
        const o = forward(model, seqs, { capture: { layerInput: true, mlpInput: true, mlpAct: true, headNorm: true, logits: false, layers } });
        try {
          forwardMs += performance.now() - s;
          s = performance.now();
          const rows = seqs.length * cfg.seqLen;
          const seq = new Int32Array(rows), pos = new Int32Array(rows);
          for (let b = 0; b < seqs.length; b++) for (let t = 0; t < cfg.seqLen; t++) { seq[b * cfg.seqLen + t] = firstSeq + b; pos[b * cfg.seqLen + t] = t; }
          writers ??= openShard();
          for (const l of layers) {
            const xa = o.captured.layerInput![l]!.dataSync() as Float32Array;
            const xm = o.captured.mlpInput![l]!.dataSync() as Float32Array;
            const act = o.captured.mlpAct![l]!.dataSync() as Float32Array;
            const hn = o.captured.headNorm![l]!.dataSync() as Float32Array;
            for (const [name, arr] of [['x_attn', xa], ['x_mlp', xm], ['mlp_act', act], ['head_norm', hn]] as const) {
              for (let i = 0; i < arr.length; i++) {
                const v = arr[i]!;
                if (!Number.isFinite(v)) throw new UserError(`non-finite ${name} value (${v}) at layer ${l}, sequence ${firstSeq + Math.floor(i / (arr.length / seqs.length))}`, 'the checkpoint produces NaN/Inf on this data: check the weights and dtype');
                if (cfg.dtype === 'float16' && name !== 'head_norm' && Math.abs(v) > 65504) throw new UserError(`${name} value ${v} at layer ${l} overflows float16`, 'use --dtype float32');
              }
            }
            const bits = new Uint8Array(Math.ceil((rows * c.ffn) / 8));
            const st = stats.get(l)!;
            let active = 0, absSum = 0;
            for (let i = 0; i < act.length; i++) { const a = act[i]!; if (a > 0) { bits[i >> 3]! |= 1 << (i & 7); active++; } absSum += Math.abs(a); }
            st.tokens += rows; st.active += active; st.actAbsSum += absSum;
            for (let r = 0; r < rows; r++) for (let h = 0; h < c.heads; h++) { const v = hn[r * c.heads + h]!; st.headNormSum[h]! += v; st.headNormSq[h]! += v * v; }
            const lr: LayerRows = {
              rows, seq, pos,
              xAttn: cfg.dtype === 'float16' ? f32ToF16Array(xa) : xa,
              xMlp: cfg.dtype === 'float16' ? f32ToF16Array(xm) : xm,
              mlpActiveBits: bits, headNorm: hn,
            };
            if (mlpAct) lr.mlpAct = f32ToF16Array(act);
            captureMs += performance.now() - s; s = performance.now();
            writers.get(l)!.write(makeBatch(schemas.get(l)!, lr));
            writeMs += performance.now() - s; s = performance.now();
          }
        } finally {
          disposeOutput(o);
        }
        tokens += seqs.length * cfg.seqLen;
        bar.update(tokens, { shard: shardIndex });
        if ((firstSeq + seqs.length) % seqsPerShard === 0) await finishShard();
      };

      const tfBefore = tf.memory().numTensors;
      try {
        shardIndex = progress.shardsDone;
        for await (const s of packSequences(readDocuments(cfg.data), { seqLen: cfg.seqLen, cfg: c, tokenizer, maxTokens: cfg.maxTokens, source: cfg.data })) {
          const idx = seqIndex++;
          if (idx < skipSeqs) continue;
          batch.push(s);
          if (batch.length === cfg.batchSize) { await runBatch(batch, idx - batch.length + 1); batch = []; }
        }
        if (skipSeqs > 0 && seqIndex < skipSeqs)
          throw new UserError(`the data now yields fewer sequences (${seqIndex}) than were already collected (${skipSeqs})`, 'use --overwrite');
        if (batch.length) await runBatch(batch, seqIndex - batch.length);
        await finishShard();
      } catch (e) {
        if (writers) for (const w of (writers as Map<number, ShardWriter>).values()) await w.abort();
        startedEmpty = shardIndex === 0; // with complete shards the run stays resumable
        throw e;
      } finally {
        bar.stop();
      }
      if (tf.memory().numTensors !== tfBefore) throw new Error(`tensor leak in collect: ${tf.memory().numTensors - tfBefore} tensors`);
      const runSeconds = (Date.now() - tRun) / 1000;
      const done: ActivationsManifest = { ...manifest, status: 'complete', tokens: seqIndex * cfg.seqLen, sequences: seqIndex, shards: shardIndex, shardSha256: Object.assign({}, ...progress.shards.map((r) => r.sha256)) };
      const newTokens = tokens - skipSeqs * cfg.seqLen;
      const summary = {
        tokens: done.tokens, sequences: done.sequences, shards: done.shards,
        seconds: (Date.now() - t0) / 1000,
        tokensPerSecond: newTokens > 0 ? newTokens / runSeconds : null,
        timing: { forwardMs: Math.round(forwardMs), captureMs: Math.round(captureMs), writeMs: Math.round(writeMs) },
        resumedFromShard,
        layers: layers.map((l) => {
          const st = stats.get(l)!;
          return {
            layer: l,
            mlpDensity: st.active / (st.tokens * c.ffn),
            mlpMeanAbsAct: st.actAbsSum / (st.tokens * c.ffn),
            headNormMean: st.headNormSum.map((s) => s / st.tokens),
            headNormStd: st.headNormSq.map((s, h) => Math.sqrt(Math.max(0, s / st.tokens - (st.headNormSum[h]! / st.tokens) ** 2))),
          };
        }),
      };
      writeJsonAtomic(path.join(out, 'summary.json'), summary);
      writeJsonAtomic(path.join(out, 'manifest.json'), done);
      fs.rmSync(path.join(out, 'progress.json'), { force: true });
      if (aside) { fs.rmSync(aside, { recursive: true, force: true }); aside = null; }
      return summarize(out, done);
    } catch (e) {
      // nothing half-written: a run that completed no shard leaves the folder as it found it (later failures stay
      // resumable); a dataset that --overwrite was replacing comes back
      if (aside) { fs.rmSync(out, { recursive: true, force: true }); fs.renameSync(aside, out); }
      else if (startedEmpty && createdHere) fs.rmSync(out, { recursive: true, force: true });
      else if (startedEmpty && fs.existsSync(out)) for (const f of fs.readdirSync(out)) fs.rmSync(path.join(out, f), { recursive: true, force: true });
      throw fsUserError(e, 'writing activations to', out);
    } finally {
      lock.release();
    }
  } finally {
    model.dispose();
  }
}

/** progress.json of a resumable run, checked against the shards on disk: resume from the first missing or altered one. */
function verifiedProgress(out: string, layers: number[], log: (m: string) => void): Progress {
  const fresh: Progress = { shardsDone: 0, tokens: 0, seconds: 0, shards: [] };
  const pf = path.join(out, 'progress.json');
  if (!fs.existsSync(pf)) return fresh;
  let p: Progress;
  try {
    const raw: unknown = JSON.parse(fs.readFileSync(pf, 'utf8'));
    const r = collectProgressSchema.safeParse(raw);
    if (!r.success) throw new Error(`unexpected contents (written by another dejavu version?): ${issueLines(r.error, raw, 5).join('; ')}`);
    p = raw as Progress;
  } catch (e) {
    log(`collect-activations: ${pf} is unreadable (${(e as Error).message}); restarting the collection from shard 0`);
    return fresh;
  }
  for (let s = 0; s < p.shardsDone; s++) for (const l of layers) {
    const file = path.join(layerDir(out, l), shardName(s));
    const problem = !fs.existsSync(file) ? 'is missing' : sha256File(file) !== p.shards[s]!.sha256[shardKey(l, s)] ? 'fails its sha256 check' : null;
    if (problem) {
      log(`collect-activations: ${file} ${problem}; rebuilding from shard ${s}`);
      const shards = p.shards.slice(0, s);
      return { shardsDone: s, tokens: shards.at(-1)?.tokens ?? 0, seconds: p.seconds, shards };
    }
  }
  return p;
}

function summarize(out: string, m: ActivationsManifest): StageResult {
  const summary = readSummary(out);
  if (!summary) throw new UserError(`activations dataset ${out} has no summary.json`, REBUILD_HINT);
  const lines = [`activations: ${out}`, `tokens ${m.tokens} in ${m.sequences} sequences of ${m.seqLen}, ${m.shards} shard(s) per layer` +
    (summary.tokensPerSecond ? `, ${summary.tokensPerSecond.toFixed(0)} tokens/s` : ''), '', '| layer | MLP density |', '|---:|---:|'];
  for (const l of summary.layers) lines.push(`| ${l.layer} | ${l.mlpDensity.toFixed(4)} |`);
  return { text: lines.join('\n'), json: { out, manifest: m, summary } };
}
