/**
 * Issue 26: `dejavu pipeline --scheduler slurm|k8s --shards N`. The fixture pipeline (tiny sizes) run as 3-shard
 * array jobs gives the bundle of one process: on a real single-node Slurm cluster when one can start here
 * (deploy/slurm/local-cluster.sh: root, slurm-wlm and munge installed by .ci/run), else with the same sbatch scripts
 * run by bash in their dependency order (the Slurm test is then skipped, with its reason in its name). The Kubernetes
 * manifests are checked against the required fields of a batch/v1 Indexed Job (kubectl is not available here).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import YAML from 'yaml';
import { z } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBackend } from '../src/backend.js';
import { openSafetensors, readTensorF32 } from '../src/checkpoint/safetensors.js';
import { FIXTURES, cli, files, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-scale-');
const CLUSTER = path.join(TMP, 'slurm');
const LOCAL_CLUSTER = path.join(REPO, 'deploy', 'slurm', 'local-cluster.sh');

/** start the single-node cluster now (the test's name carries the reason when it cannot) */
function startSlurm(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.env.DEJAVU_TEST_NO_SLURM) return 'DEJAVU_TEST_NO_SLURM is set';
  const r = spawnSync('bash', [LOCAL_CLUSTER, 'start', CLUSTER], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) return (r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n')[0]!;
  process.env.SLURM_CONF = path.join(CLUSTER, 'slurm.conf');
  return null;
}
const slurmMissing = startSlurm();
afterAll(() => {
  if (!slurmMissing) spawnSync('bash', [LOCAL_CLUSTER, 'stop', CLUSTER], { stdio: 'inherit' });
  delete process.env.SLURM_CONF;
  fs.rmSync(TMP, { recursive: true, force: true });
});
beforeAll(async () => { await ensureBackend('wasm'); process.env.DEJAVU_CACHE_DIR = path.join(TMP, 'cache'); });

const W = path.join(TMP, 'work');
const config = (file: string) => {
  fs.writeFileSync(file, [`model: ${MODEL}`, `workdir: ${W}`, 'backend: wasm',
    `data: { calibration: ${path.join(REPO, 'data', 'calibration.jsonl')}, heldout: ${path.join(REPO, 'data', 'heldout.jsonl')} }`,
    // 16 sequences in 2 dataset shards for 3 process shards: shard 2 gets none (allowed: its statistics are zeros)
    'collect: { seqLen: 32, maxTokens: 512, dtype: float32, workers: 1, rowsPerShard: 64 }', 'heldoutCollect: { maxTokens: 384 }',
    'train: { workers: 1, heads: { rank: 4 }, optim: { epochs: 1 } }', 'evaluate: { seqLen: 32, maxTokens: 64, workers: 1 }',
    'plan: { neverSlower: false }'].join('\n')); // the plan's choice then follows the cached kernel costs only, not a timing race
  return file;
};
const CFG = config(path.join(TMP, 'pipeline.yaml'));
const ONE = path.join(TMP, 'work-one');

const json = (f: string) => JSON.parse(fs.readFileSync(f, 'utf8'));
const same = (a: string, b: string) => fs.readFileSync(a).equals(fs.readFileSync(b));

/** the sharded workdir W against the one-process workdir ONE (same path when made, so paths in files agree) */
function expectSameAsOneProcess(): void {
  for (const d of ['activations-calibration', 'activations-heldout'])
    for (const f of files(path.join(ONE, d))) if (f !== 'summary.json') expect(same(path.join(W, d, f), path.join(ONE, d, f)), `${d}/${f}`).toBe(true);
  for (const f of files(path.join(ONE, 'predictors')).filter((x) => x.endsWith('.safetensors'))) expect(same(path.join(W, 'predictors', f), path.join(ONE, 'predictors', f)), f).toBe(true);
  // the bundle: the same files, neuron-major weights byte for byte, the same predictor tensors, the same manifest but
  // for when it was made, the plan's measured decode times and the checksums that cover them
  const b1 = path.join(ONE, 'bundle'), b = path.join(W, 'bundle');
  expect(files(b)).toEqual(files(b1));
  expect(same(path.join(b, 'neuron-major.safetensors'), path.join(b1, 'neuron-major.safetensors'))).toBe(true);
  const st = openSafetensors(path.join(b, 'predictors.safetensors')), st1 = openSafetensors(path.join(b1, 'predictors.safetensors'));
  expect([...st.tensors.keys()].sort()).toEqual([...st1.tensors.keys()].sort());
  for (const k of st1.tensors.keys()) expect(readTensorF32(st, k), k).toEqual(readTensorF32(st1, k));
  const TIMING = new Set(['createdAt', 'stepMs', 'denseStepMs', 'speedup', 'sha256', 'manifestSha256', 'seconds', 'ms', 'estimatedMs']);
  const strip = (v: unknown): unknown => Array.isArray(v) ? v.map(strip) : v && typeof v === 'object'
    ? Object.fromEntries(Object.entries(v).filter(([k]) => !TIMING.has(k)).map(([k, x]) => [k, strip(x)])) : v;
  // predictors.safetensors' size also varies with those times: its header holds the sealed manifest copy, whose
  // decode-time digits can differ in count (its tensors are compared above)
  const manifest = (dir: string) => {
    const m = strip(json(path.join(dir, 'manifest.json'))) as { files: Record<string, { bytes?: number }> };
    delete m.files['predictors.safetensors']!.bytes;
    return m;
  };
  expect(manifest(b)).toEqual(manifest(b1));
}

describe('pipeline --scheduler slurm --shards 3', () => {
  beforeAll(async () => {
    const r = await cli('pipeline', '--config', CFG, '--quiet');
    expect(r.code, r.err).toBe(0);
    fs.renameSync(W, ONE);
  }, 60_000);

  it('writes an sbatch array script per data-parallel step, its merges, and submit.sh with afterok dependencies', async () => {
    const r = await cli('pipeline', '--config', CFG, '--scheduler', 'slurm', '--shards', '3', '--quiet');
    expect(r.code, r.err).toBe(0);
    const jobs = path.join(W, 'jobs');
    expect(files(jobs)).toEqual(['collect-calibration.sbatch', 'collect-heldout.sbatch', 'finish.sbatch', 'merge-calibration.sbatch', 'merge-heldout.sbatch',
      'merge-predictors.sbatch', 'pipeline.json', 'submit.sh', 'train.sbatch']);
    const cal = fs.readFileSync(path.join(jobs, 'collect-calibration.sbatch'), 'utf8');
    expect(cal).toContain('#SBATCH --array=0-2');
    expect(cal).toContain('--step collect-calibration --shards 3 --shard ${SLURM_ARRAY_TASK_ID}/3');
    expect(fs.readFileSync(path.join(jobs, 'train.sbatch'), 'utf8')).toContain('#SBATCH --array=0-1'); // 2 layers: 2 shards
    expect(fs.readFileSync(path.join(jobs, 'merge-predictors.sbatch'), 'utf8')).not.toContain('--array');
    expect(fs.readFileSync(path.join(jobs, 'submit.sh'), 'utf8')).toMatch(/train=\$\(sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:\$\{mcal%%;\*\} train\.sbatch\)/);
    for (const f of files(jobs).filter((x) => /\.(sh|sbatch)$/.test(x))) expect(spawnSync('bash', ['-n', path.join(jobs, f)]).status, f).toBe(0);
    // the config the jobs run is the resolved one, without the scale-out keys (the finishing job is a plain pipeline)
    expect(json(path.join(jobs, 'pipeline.json'))).toMatchObject({ workdir: W, collect: { seqLen: 32 } });
    expect(json(path.join(jobs, 'pipeline.json')).scaleOut).toBeUndefined();
    // a step run by hand with the wrong shard count is refused
    const bad = await cli('pipeline', '--config', path.join(jobs, 'pipeline.json'), '--step', 'train', '--shards', '3', '--shard', '0/3', '--quiet');
    expect(bad.code).toBe(2);
    expect(bad.err).toContain('--step train --shard 0/3: this step has 2 shard(s)');
  });

  it(`on a single-node Slurm cluster as array jobs: the bundle equals one process's${slurmMissing ? ` (skipped: ${slurmMissing})` : ''}`, { skip: !!slurmMissing, timeout: 120_000 }, async () => {
    const r = await cli('pipeline', '--config', CFG, '--scheduler', 'slurm', '--shards', '3', '--submit', '--quiet');
    expect(r.code, r.err + r.out).toBe(0);
    const logs = files(path.join(W, 'jobs')).filter((f) => f.endsWith('.log'));
    expect(logs.filter((f) => f.startsWith('collect-calibration-')).length).toBe(3); // three array tasks
    expect(fs.readFileSync(path.join(W, 'jobs', logs.find((f) => f.startsWith('finish-'))!), 'utf8')).toContain(`bundle: ${path.join(W, 'bundle')} (verified)`);
    expectSameAsOneProcess();
  });

  it('the same scripts run in their dependency order by bash (no scheduler): the bundle equals one process\'s', { skip: !slurmMissing, timeout: 120_000 }, async () => {
    const jobs = path.join(W, 'jobs');
    const run = (step: string, tasks = 1) => {
      for (let i = 0; i < tasks; i++) {
        const r = spawnSync('bash', [path.join(jobs, `${step}.sbatch`)], { encoding: 'utf8', env: { ...process.env, SLURM_ARRAY_TASK_ID: String(i) } });
        expect(r.status, `${step} ${i}: ${r.stderr}`).toBe(0);
      }
    };
    run('collect-calibration', 3); run('collect-heldout', 3); run('merge-calibration'); run('merge-heldout'); run('train', 2); run('merge-predictors');
    // the finishing pipeline finds the merged collections and predictors current: they are what it would have made
    const fin = await cli('pipeline', '--config', path.join(jobs, 'pipeline.json'));
    expect(fin.code, fin.err).toBe(0);
    for (const s of ['collect (calibration)', 'collect (held-out)', 'train-predictors']) expect(fin.err).toContain(`== ${s}: current; nothing to do`);
    expectSameAsOneProcess();
  });
});

/** the fields a batch/v1 Job with completionMode Indexed needs (API reference: Job, JobSpec, PodTemplateSpec, PodSpec, Container) */
const dns1123 = z.string().max(63).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
const indexedJob = z.object({
  apiVersion: z.literal('batch/v1'),
  kind: z.literal('Job'),
  metadata: z.object({ name: dns1123, labels: z.record(z.string(), z.string()).optional() }),
  spec: z.object({
    completionMode: z.literal('Indexed'),
    completions: z.number().int().positive(),
    parallelism: z.number().int().positive(),
    backoffLimit: z.number().int().min(0).optional(),
    template: z.object({
      spec: z.object({
        restartPolicy: z.enum(['Never', 'OnFailure']), // a Job's pods may not use Always
        containers: z.array(z.object({ name: dns1123, image: z.string().min(1), command: z.array(z.string()).optional(), args: z.array(z.string()).optional(),
          workingDir: z.string().optional(), volumeMounts: z.array(z.object({ name: z.string(), mountPath: z.string().startsWith('/') })).optional() })).min(1),
        volumes: z.array(z.object({ name: z.string(), persistentVolumeClaim: z.object({ claimName: dns1123 }) })).optional(),
      }),
    }),
  }).refine((s) => s.parallelism <= s.completions, 'parallelism above completions'),
});

describe('pipeline --scheduler k8s --shards 3', () => {
  const w = path.join(TMP, 'k8s');
  it('--submit with k8s is refused by name (exit 2), not ignored; nothing is written', async () => {
    const cfg = path.join(TMP, 'k8s-submit.yaml'), w2 = path.join(TMP, 'k8s-submit');
    fs.writeFileSync(cfg, fs.readFileSync(CFG, 'utf8').replace(`workdir: ${W}`, `workdir: ${w2}`));
    const r = await cli('pipeline', '--config', cfg, '--scheduler', 'k8s', '--shards', '3', '--submit', '--quiet');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--submit works with --scheduler slurm only/);
    expect(fs.existsSync(w2)).toBe(false);
  });
  it('writes an Indexed Job manifest per step on a shared PersistentVolumeClaim, and apply.sh waiting for each in order', async () => {
    const cfg = path.join(TMP, 'k8s.yaml');
    fs.writeFileSync(cfg, fs.readFileSync(CFG, 'utf8').replace(`workdir: ${W}`, `workdir: ${w}`));
    const r = await cli('pipeline', '--config', cfg, '--scheduler', 'k8s', '--shards', '3', '--set', 'scaleOut.pvc=my-claim', '--set', 'scaleOut.image=registry.example/dejavu:1', '--quiet');
    expect(r.code, r.err).toBe(0);
    const jobs = path.join(w, 'jobs');
    const manifests = files(jobs).filter((f) => f.endsWith('.yaml'));
    expect(manifests).toEqual(['collect-calibration.yaml', 'collect-heldout.yaml', 'finish.yaml', 'merge-calibration.yaml', 'merge-heldout.yaml', 'merge-predictors.yaml', 'train.yaml']);
    for (const f of manifests) {
      const docs = YAML.parseAllDocuments(fs.readFileSync(path.join(jobs, f), 'utf8'));
      expect(docs.length, f).toBe(1);
      const job = docs[0]!.toJS();
      const v = indexedJob.safeParse(job);
      expect(v.success, `${f}: ${JSON.stringify(v.error?.issues)}`).toBe(true);
      const pod = job.spec.template.spec, c = pod.containers[0];
      expect(c.image).toBe('registry.example/dejavu:1');
      // every mount names a volume of the pod, and the shared claim is mounted where the jobs work
      for (const m of c.volumeMounts) expect(pod.volumes.map((x: any) => x.name)).toContain(m.name);
      expect(pod.volumes[0].persistentVolumeClaim.claimName).toBe('my-claim');
      expect(c.volumeMounts[0].mountPath).toBe(c.workingDir);
      const step = f.replace('.yaml', ''), n = { 'collect-calibration': 3, 'collect-heldout': 3, train: 2 }[step] ?? 1;
      expect(job.spec.completions, f).toBe(n);
      expect(c.args[0], f).toContain(`--config ${path.join(jobs, 'pipeline.json')}`);
      if (n > 1) expect(c.args[0], f).toContain(`--step ${step} --shards 3 --shard \${JOB_COMPLETION_INDEX}/${n}`);
    }
    const apply = fs.readFileSync(path.join(jobs, 'apply.sh'), 'utf8');
    expect(spawnSync('sh', ['-n', path.join(jobs, 'apply.sh')]).status).toBe(0);
    const order = ['collect-heldout', 'merge-calibration', 'merge-heldout', 'train', 'merge-predictors', 'finish'].map((s) => apply.indexOf(`run ${s}\n`));
    expect(order.every((i, k) => i > 0 && (k === 0 || i > order[k - 1]!))).toBe(true);
    expect(apply.indexOf('kubectl wait --for=condition=complete job/dejavu-collect-calibration')).toBeLessThan(apply.indexOf('run merge-calibration'));
  });
});
