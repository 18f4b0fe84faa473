/**
 * pipeline past one machine (issue 26): `dejavu pipeline --scheduler slurm|k8s --shards N` writes the job scripts into
 * WORKDIR/jobs (from the templates in deploy/): the two collections and train-predictors as N-shard arrays (Slurm
 * array jobs, Kubernetes Indexed Jobs), each followed by its merge, then the rest of the pipeline in one job, which finds
 * the merged outputs current. Each job runs `dejavu pipeline --step STEP [--shard i/n]` on the same resolved config
 * (WORKDIR/jobs/pipeline.json), so a shard's stage config is exactly the one the pipeline gives that stage.
 * Shard outputs go to WORKDIR/shards/STAGE-i. The workdir must be on storage every node (pod) shares.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { StageResult } from './types.js';
import type { StageDeps } from '../util/progress.js';
import { collectSchema, trainSchema, type PipelineConfig } from '../config/schemas.js';
import { UserError, withFsErrors } from '../util/errors.js';
import { checkOutput, writeMarker } from '../util/outdir.js';
import { writeFileAtomic } from '../util/fsx.js';
import { normalizeConfig } from '../model/config.js';
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { runCollect } from './collect.js';
import { runTrain } from './train.js';
import { runMerge } from './merge.js';
import { defaultWorkdir, resolveData } from './workdir.js';

type ScaleOut = NonNullable<PipelineConfig['scaleOut']>;
type Step = NonNullable<ScaleOut['step']>;
const ARRAYS: Step[] = ['collect-calibration', 'collect-heldout', 'train'];
const HINT = 'dejavu pipeline --config FILE --scheduler slurm|k8s --shards N (writes WORKDIR/jobs), or --step STEP --shards N [--shard i/n] (what a job runs)';

const stageDir = (w: string, s: 'cal' | 'held' | 'pred') => path.join(w, s === 'cal' ? 'activations-calibration' : s === 'held' ? 'activations-heldout' : 'predictors');
const shardDir = (w: string, s: 'cal' | 'held' | 'pred', i: number) => path.join(w, 'shards', `${path.basename(stageDir(w, s))}-${i}`);

/** the workdir, checked and marked as the pipeline does before any work */
function prepareWorkdir(w: string): void {
  const ws = checkOutput(w, 'workdir');
  if (ws.state !== 'ours' || ws.legacy) withFsErrors('writing', w, () => { fs.mkdirSync(w, { recursive: true }); writeMarker(w, 'workdir'); });
}

/** train-predictors' shard count: at most one shard per layer */
function trainShards(cfg: PipelineConfig, n: number): number {
  const layers = cfg.train.layers === 'all' ? normalizeConfig(openCheckpoint(cfg.model).rawConfig, `${cfg.model}/config.json`).layers : new Set(cfg.train.layers).size;
  return Math.min(n, layers);
}

export async function runScaleOut(cfg0: PipelineConfig, deps: StageDeps): Promise<StageResult> {
  const cfg = { ...cfg0, workdir: cfg0.workdir ?? defaultWorkdir(cfg0.model) };
  const so = cfg.scaleOut!;
  if (!so.shards) throw new UserError('pipeline --scheduler / --step needs the shard count (--shards N)', HINT);
  if (so.step) return runStep(cfg, so.step, so.shards, so.shard, deps);
  if (!so.scheduler) throw new UserError('--shards and --shard need --scheduler slurm|k8s (to write the jobs) or --step (to run one)', HINT);
  if (so.submit && so.scheduler !== 'slurm') throw new UserError(`--submit works with --scheduler slurm only (the ${so.scheduler} jobs are not submitted by dejavu)`, 'drop --submit and apply the manifests with WORKDIR/jobs/apply.sh (kubectl)');
  return writeJobs(cfg, so, deps);
}

/** One step of the scaled-out pipeline: a stage's shard (the stage config the pipeline gives it, plus --shard) or a merge. */
async function runStep(cfg: PipelineConfig & { workdir: string }, step: Step, n: number, shard: ScaleOut['shard'], deps: StageDeps): Promise<StageResult> {
  const w = cfg.workdir, data = cfg.data;
  if (typeof data === 'string') throw new UserError(`--step ${step} needs the calibration and held-out parts, not one data file`, 'run the steps with the config that `pipeline --scheduler ...` wrote (WORKDIR/jobs/pipeline.json): it names both parts');
  if (ARRAYS.includes(step) !== !!shard) throw new UserError(`--step ${step} ${shard ? 'takes no --shard' : 'needs --shard i/n'}`, HINT);
  const count = step === 'train' || step === 'merge-predictors' ? trainShards(cfg, n) : n;
  if (shard && shard.count !== count) throw new UserError(`--step ${step} --shard ${shard.index}/${shard.count}: this step has ${count} shard(s)`, `use --shard i/${count}`);
  prepareWorkdir(w);
  const inputs = (s: 'cal' | 'held' | 'pred') => Array.from({ length: count }, (_, i) => shardDir(w, s, i));
  fs.mkdirSync(path.join(w, 'shards'), { recursive: true });
  // the stage configs as runPipeline builds them (keep in step with src/stages/pipeline.ts)
  const base = { model: cfg.model, backend: cfg.backend, overwrite: true };
  switch (step) {
    case 'collect-calibration':
      return runCollect(collectSchema.parse({ ...cfg.collect, ...base, data: data.calibration, out: shardDir(w, 'cal', shard!.index), shard }), deps);
    case 'collect-heldout':
      return runCollect(collectSchema.parse({ ...cfg.collect, ...(cfg.heldoutCollect.maxTokens ? { maxTokens: cfg.heldoutCollect.maxTokens } : {}), ...base, data: data.heldout, out: shardDir(w, 'held', shard!.index), shard }), deps);
    case 'train':
      return runTrain(trainSchema.parse({ ...cfg.train, activations: stageDir(w, 'cal'), out: shardDir(w, 'pred', shard!.index), backend: cfg.backend, overwrite: true, shard }), deps);
    case 'merge-calibration': return runMerge({ kind: 'activations', out: stageDir(w, 'cal'), inputs: inputs('cal'), overwrite: true }, deps);
    case 'merge-heldout': return runMerge({ kind: 'activations', out: stageDir(w, 'held'), inputs: inputs('held'), overwrite: true }, deps);
    case 'merge-predictors': return runMerge({ kind: 'predictors', out: stageDir(w, 'pred'), inputs: inputs('pred'), overwrite: true }, deps);
  }
}

const DEPLOY = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'deploy');
const fill = (tmpl: string, v: Record<string, string>) => tmpl.replace(/\{\{(\w+)\}\}/g, (_, k: string) => {
  if (!(k in v)) throw new Error(`deploy template placeholder {{${k}}} has no value`);
  return v[k]!;
});
const shq = (s: string) => /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;

/** Write WORKDIR/jobs: pipeline.json (the resolved config), a script or manifest per step, and the submit script. */
async function writeJobs(cfg0: PipelineConfig & { workdir: string }, so: ScaleOut, deps: StageDeps): Promise<StageResult> {
  const w = cfg0.workdir, jobs = path.join(w, 'jobs'), cwd = process.cwd();
  prepareWorkdir(w);
  // one data file is split here, once: the jobs get both parts (WORKDIR/jobs/pipeline.json)
  const { data, line } = await resolveData(cfg0.data, w);
  deps.log(line);
  const cfg = { ...cfg0, data };
  withFsErrors('writing', jobs, () => fs.mkdirSync(jobs, { recursive: true }));
  const { scaleOut: _so, ...plain } = cfg;
  const config = path.join(jobs, 'pipeline.json');
  writeFileAtomic(config, JSON.stringify(plain, null, 2) + '\n');
  const n = so.shards!, nTrain = trainShards(cfg, n);
  const dejavu = `${shq(process.execPath)} ${shq(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'dejavu.js'))}`;
  const steps: [string, number | null][] = [['collect-calibration', n], ['collect-heldout', n], ['merge-calibration', null], ['merge-heldout', null], ['train', nTrain], ['merge-predictors', null], ['finish', null]];
  const written: string[] = [];
  const put = (name: string, text: string, mode = 0o644) => { const f = path.join(jobs, name); writeFileAtomic(f, text); fs.chmodSync(f, mode); written.push(f); };
  const slurm = so.scheduler === 'slurm';
  const tmpl = fs.readFileSync(path.join(DEPLOY, slurm ? 'slurm/step.sbatch' : 'k8s/step-job.yaml'), 'utf8');
  for (const [step, shards] of steps) {
    const idx = slurm ? '${SLURM_ARRAY_TASK_ID}' : '${JOB_COMPLETION_INDEX}';
    const args = step === 'finish' ? '' : `--step ${step} --shards ${n}${shards ? ` --shard ${idx}/${shards}` : ''}`;
    const v = { step, n: String(shards ?? 1), args, cwd: shq(cwd), config: shq(path.resolve(config)), dejavu: slurm ? dejavu : 'dejavu', jobs: path.resolve(jobs), image: so.image, pvc: so.pvc,
      array: shards ? `#SBATCH --array=0-${shards - 1}` : '', array_note: shards ? `, shards 0..${shards - 1} as an array job` : '', log: shards ? '%A_%a' : '%j' };
    put(`${step}.${slurm ? 'sbatch' : 'yaml'}`, fill(tmpl, v));
  }
  const submit = slurm ? 'submit.sh' : 'apply.sh';
  put(submit, fill(fs.readFileSync(path.join(DEPLOY, slurm ? 'slurm/submit.sh' : 'k8s/apply.sh'), 'utf8'), { workdir: path.resolve(w), pvc: so.pvc }), 0o755);
  const lines = [`${so.scheduler} jobs for ${n} shard(s) (train-predictors: ${nTrain}) in ${jobs}:`, ...written.map((f) => `  ${f}`),
    slurm ? `submit: bash ${path.join(jobs, submit)} [--wait]` : `apply: sh ${path.join(jobs, submit)} (kubectl; PersistentVolumeClaim ${so.pvc} mounted at ${cwd})`];
  if (slurm && so.submit) {
    deps.log(`pipeline: submitting ${path.join(jobs, submit)} and waiting`);
    const r = spawnSync('bash', [path.join(jobs, submit), '--wait'], { encoding: 'utf8' });
    if (r.error) throw new UserError(`cannot run ${submit}: ${r.error.message}`, 'run it where sbatch is installed');
    if (r.status !== 0) throw new UserError(`the Slurm jobs did not all succeed (${submit} --wait exited ${r.status}): ${(r.stderr || r.stdout || '').trim().split('\n').slice(-3).join(' / ')}`, `see the jobs' logs in ${jobs} (STEP-JOBID_TASK.log)`);
    lines.push((r.stdout ?? '').trim());
    return { text: lines.filter(Boolean).join('\n'), json: { jobs, files: written, submitted: true } };
  }
  return { text: lines.join('\n'), json: { jobs, files: written, submitted: false } };
}
