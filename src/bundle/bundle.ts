/**
 * Bundle = manifest.json + predictors.safetensors (+ neuron-major.safetensors). See docs/bundle.md.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fingerprintCheckpoint, openCheckpoint, sameFingerprint } from '../checkpoint/checkpoint.js';
import { openSafetensors, readTensorF32, type TensorToWrite, writeSafetensors } from '../checkpoint/safetensors.js';
import { normalizeConfig } from '../model/config.js';
import { readLayerTensors } from '../model/model.js';
import { transpose2d } from '../util/transpose.js';
import { disposeSite, gateActOf, type LoadedPredictors, type LoadedSite } from '../predictors/hooks.js';
import { fromHost } from '../predictors/predictor.js';
import type { PredictorEntry, PredictorsManifest } from '../predictors/store.js';
import { hasLowRankWeights, loadHostPredictor, readPredictorsManifest } from '../predictors/store.js';
import { fsUserError, UserError } from '../util/errors.js';
import { beginOutput } from '../util/outdir.js';
import { sha256File } from '../util/fsx.js';
import { writeArtifact } from '../util/json-artifact.js';
import { sealed } from '../util/seal.js';
import { BUNDLE_FORMAT_VERSION, READABLE_BUNDLE_FORMATS, bundleManifestSchema, legacyBundleManifestSchema, legacyToCurrent, manifestChecksum, SEALED_MANIFEST_KEY, sealedPart, type BundleManifest } from './schema.js';
import { canonicalJson, jsonDiff } from '../util/canonical-json.js';
import { assertFinitePredictor } from '../predictors/finite.js';
import { readEvalReport, type EvalReport } from '../eval/report.js';
import { checkPredictorsUnchanged, predictorsContentHash } from '../predictors/content-hash.js';
import { VERSION } from '../version.js';
import { planProblems, readPlanFile, type PlanFile, type RuntimePlan } from '../runtime/plan.js';

type PredJson = NonNullable<BundleManifest['layers'][number]['mlp']>;

function predictorJson(layer: number, site: 'mlp' | 'heads', e: PredictorEntry, d: number, W: number, evalMetrics?: { recall: number; precision: number; predictedDensity: number; trueDensity: number }): PredJson {
  const p = `layers.${layer}.${site}`;
  const ex = evalMetrics ?? e.validation;
  const lowRank = hasLowRankWeights(e.predictor);
  const refs = (q: string) => ({ fc1Weight: { name: `${q}.fc1.weight`, shape: [e.rank, d] }, fc1Bias: { name: `${q}.fc1.bias`, shape: [e.rank] }, fc2Weight: { name: `${q}.fc2.weight`, shape: [W, e.rank] }, fc2Bias: { name: `${q}.fc2.bias`, shape: [W] } });
  return {
    predictor: e.predictor, score: e.score, rank: e.rank, hiddenActivation: e.hiddenActivation, input: e.input as PredJson['input'], label: e.label as PredJson['label'], rule: e.rule,
    tensors: lowRank ? refs(p) : null, upTensors: lowRank && e.score === 'swiglu' ? refs(`${p}.up`) : null,
    expected: { recall: ex.recall, precision: ex.precision, predictedDensity: ex.predictedDensity, trueDensity: ex.trueDensity, source: evalMetrics ? 'evaluate-recall' : 'validation' },
    flopShare: e.flopShare,
  };
}

export interface ExportOptions {
  model: string; predictors: string; report?: string | undefined; plan?: string | undefined; out: string; neuronMajor: boolean; overwrite: boolean;
  config: Record<string, unknown>;
}

export function exportBundle(o: ExportOptions): BundleManifest {
  // the predictors' content hash as loaded: taken before anything is read, checked again before the bundle is committed
  const predictorsSha256 = predictorsContentHash(o.predictors);
  const pm: PredictorsManifest = readPredictorsManifest(o.predictors);
  const fp = fingerprintCheckpoint(o.model);
  if (!sameFingerprint(fp, pm.model.fingerprint)) throw new UserError(`predictors in ${o.predictors} were trained for another checkpoint than ${o.model}`, 'pass the checkpoint the activations were collected from');
  let report: EvalReport | null = null;
  if (o.report) {
    report = readEvalReport(o.report); // sealed: an edited report is refused
    // the report must describe these exact weights (a retrain into the same folder keeps the path, not the content)
    if (report.predictorsSha256 !== predictorsSha256)
      throw new UserError(`the report in ${o.report} evaluated other predictors than ${o.predictors} holds now (content sha256 ${report.predictorsSha256.slice(0, 12)}… vs ${predictorsSha256.slice(0, 12)}…; evaluated: ${report.config.predictors})`,
        're-run evaluate-recall on these predictors, or export without --report');
  }
  let plan: PlanFile | null = null;
  if (o.plan) {
    plan = readPlanFile(o.plan); // sealed: an edited plan (its predictorsSha256 included) is refused
    if (plan.predictorsSha256 !== predictorsSha256)
      throw new UserError(`the plan in ${o.plan} was made for other predictors than ${o.predictors} holds now (content sha256 ${plan.predictorsSha256.slice(0, 12)}… vs ${predictorsSha256.slice(0, 12)}…)`, 're-run `dejavu plan` on these predictors, or export without --plan');
  }
  const ck = openCheckpoint(o.model);
  const c = normalizeConfig(ck.rawConfig, o.model);
  // written to a temp sibling and renamed into place; only a bundle folder of ours is ever replaced (util/outdir)
  const w = beginOutput(o.out, 'bundle', {
    mayReplace: (s) => { if (s.state === 'ours' && !o.overwrite) throw new UserError(`bundle folder ${o.out} exists and is not empty`, 'choose another --out or pass --overwrite'); },
  });
  let m: BundleManifest;
  try {
    m = writeBundle(o, pm, fp, report, plan?.plan ?? null, ck, c, w.tmp);
    checkPredictorsUnchanged(o.predictors, predictorsSha256, 'export-bundle');
  } catch (e) { w.abort(); throw fsUserError(e, 'writing', o.out); }
  w.commit();
  return m;
}

function writeBundle(o: ExportOptions, pm: PredictorsManifest, fp: ReturnType<typeof fingerprintCheckpoint>, report: EvalReport | null, plan: RuntimePlan | null,
  ck: ReturnType<typeof openCheckpoint>, c: ReturnType<typeof normalizeConfig>, tmp: string): BundleManifest {
  const ptensors: Record<string, TensorToWrite> = {};
  const ntensors: Record<string, TensorToWrite> = {};
  const layers: BundleManifest['layers'] = [];
  if (plan) {
    const problems = planProblems(plan, c, (site, i) => Boolean(pm.layers.find((l) => l.layer === i)?.[site] && hasLowRankWeights(pm.layers.find((l) => l.layer === i)![site]!.predictor)));
    if (problems.length) throw new UserError(`the plan in ${o.plan} does not fit these predictors:\n  - ${problems.join('\n  - ')}`, 're-run `dejavu plan` on these predictors');
  }
  const dt: 'F32' | 'F16' = [...ck.tensors.values()].every((t) => t.info.dtype === 'F32') ? 'F32' : 'F16';
  for (const l of pm.layers) {
    const ev = report?.layers.find((x) => x.layer === l.layer);
    const entry: BundleManifest['layers'][number] = { layer: l.layer, mlp: null, heads: null, neuronMajor: null };
    for (const site of ['mlp', 'heads'] as const) {
      const e = l[site];
      if (!e) continue;
      const j = predictorJson(l.layer, site, e, c.hidden, site === 'mlp' ? c.ffn : c.heads, ev?.[site]?.metrics);
      for (const [refs, prefix] of [[j.tensors, site], [j.upTensors, 'mlp.up']] as const) {
        if (!refs) continue;
        const h = loadHostPredictor(o.predictors, l.file, prefix, e.hiddenActivation);
        assertFinitePredictor(h, `layer ${l.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor in ${o.predictors}`, prefix);
        ptensors[refs.fc1Weight.name] = { dtype: 'F16', shape: refs.fc1Weight.shape, data: h.fc1Weight };
        ptensors[refs.fc1Bias.name] = { dtype: 'F16', shape: refs.fc1Bias.shape, data: h.fc1Bias };
        ptensors[refs.fc2Weight.name] = { dtype: 'F16', shape: refs.fc2Weight.shape, data: h.fc2Weight };
        ptensors[refs.fc2Bias.name] = { dtype: 'F16', shape: refs.fc2Bias.shape, data: h.fc2Bias };
      }
      entry[site] = j;
    }
    if (o.neuronMajor) {
      // the MLP's rows, neuron-major [F, d] (our layout is [in, out]: up / gate transposed, down already is)
      const t = readLayerTensors(ck, c, l.layer), d = c.hidden, F = c.ffn;
      const nm = `layers.${l.layer}.neuron_major`, sh = [F, d];
      const put = (n: string, data: Float32Array, shape = sh, dtype = dt) => { ntensors[`${nm}.${n}`] = { dtype, shape, data }; return { name: `${nm}.${n}`, shape }; };
      entry.neuronMajor = { up: put('up', transpose2d(t.up!.data, d, F)), down: put('down', t.down!.data), gate: t.gate ? put('gate', transpose2d(t.gate.data, d, F)) : null,
        upBias: t.upBias ? put('up_bias', t.upBias.data, [F], 'F32') : null, gateBias: t.gateBias ? put('gate_bias', t.gateBias.data, [F], 'F32') : null };
    }
    layers.push(entry);
  }
  const body: Omit<BundleManifest, 'files' | 'manifestSha256'> = {
    formatVersion: BUNDLE_FORMAT_VERSION, kind: 'dejavu-bundle', toolVersion: VERSION, createdAt: new Date().toISOString(), config: o.config,
    model: { fingerprint: fp, family: c.family, architecture: c as unknown as Record<string, unknown>, dims: { layers: c.layers, hidden: c.hidden, ffn: c.ffn, heads: c.heads,
        kvHeads: c.kvHeads, headDim: c.headDim } },
    predictorsFile: 'predictors.safetensors', neuronMajorFile: o.neuronMajor ? 'neuron-major.safetensors' : null,
    layers, perplexity: report?.perplexity?.runs ?? null, plan,
  };
  // a copy of the manifest (less the files table) sealed in the checksummed predictors file: an edited manifest is
  // caught, and verify-bundle can name the field that changed
  writeSafetensors(path.join(tmp, 'predictors.safetensors'), ptensors, { format: 'pt', kind: 'dejavu-predictors', [SEALED_MANIFEST_KEY]: canonicalJson(body) });
  if (o.neuronMajor) writeSafetensors(path.join(tmp, 'neuron-major.safetensors'), ntensors, { format: 'pt', kind: 'dejavu-neuron-major' });
  const files: BundleManifest['files'] = {};
  for (const f of fs.readdirSync(tmp).filter((x) => !x.startsWith('.'))) files[f] = { sha256: sha256File(path.join(tmp, f)), bytes: fs.statSync(path.join(tmp, f)).size };
  const manifest: BundleManifest = sealed({ ...body, files }, 'manifestSha256');
  writeArtifact(bundleManifestSchema, manifest, path.join(tmp, 'manifest.json'), 'bundle manifest');
  return manifest;
}

/** Compare the manifest with the copy sealed in predictors.safetensors at export: every changed field, by path. */
function sealedCopyProblems(dir: string, predictorsFile: string, raw: Record<string, unknown>): string[] {
  const file = path.join(dir, predictorsFile);
  if (predictorsFile.includes('/') || predictorsFile.includes('..') || !fs.existsSync(file)) return []; // reported by the file checks
  let meta: Record<string, string>;
  try { meta = openSafetensors(file).metadata; } catch { return []; } // reported by the tensor checks
  const sealedText = meta[SEALED_MANIFEST_KEY];
  if (sealedText === undefined) return [`${predictorsFile} carries no sealed manifest copy (${SEALED_MANIFEST_KEY} metadata): the file was not written by this export`];
  let sealed: unknown;
  try { sealed = JSON.parse(sealedText); } catch { return [`${predictorsFile}: the sealed manifest copy (${SEALED_MANIFEST_KEY} metadata) is not valid JSON`]; }
  const diff = jsonDiff(sealedPart(raw), sealed);
  const shown = diff.slice(0, 20).map((d) => `manifest.json ${d.path} is ${d.now}, was ${d.was} at export (the copy sealed in ${predictorsFile})`);
  if (diff.length > 20) shown.push(`manifest.json: ${diff.length - 20} more fields differ from the copy sealed in ${predictorsFile}`);
  return shown;
}

/** Every problem with a bundle, in one list (empty = valid). */
export function verifyBundle(dir: string, model?: string): { problems: string[]; manifest: BundleManifest | null } {
  const problems: string[] = [];
  const mf = path.join(dir, 'manifest.json');
  if (!fs.existsSync(mf)) return { problems: [`${mf} does not exist`], manifest: null };
  if (fs.statSync(mf).isDirectory()) return { problems: [`${mf} is a folder, not a file (a bundle's manifest.json is the file export-bundle writes)`], manifest: null };
  let raw: unknown;
  try { raw = JSON.parse(fs.readFileSync(mf, 'utf8')); } catch (e) { return { problems: [`manifest.json is not valid JSON: ${(e as Error).message}`], manifest: null }; }
  const fv = (raw as { formatVersion?: unknown } | null)?.formatVersion;
  if (typeof fv === 'number' && !READABLE_BUNDLE_FORMATS.includes(fv))
    return { problems: [`manifest.json formatVersion: bundle format ${fv} is not supported by this dejavu (it reads formats ${READABLE_BUNDLE_FORMATS.join(', ')}, whose manifest is checksummed); re-export the bundle with \`dejavu export-bundle\``], manifest: null };
  // formats 2 and 3 are checked as written (their entries keyed `family`), then renamed; the seals cover the raw text
  const legacy = fv === 2 || fv === 3;
  const parsed = legacy ? legacyBundleManifestSchema.safeParse(raw) : bundleManifestSchema.safeParse(raw);
  if (!parsed.success) return { problems: parsed.error.issues.map((i) => `manifest.json ${i.path.join('.') || '(top level)'}: ${i.message}`), manifest: null };
  const m: BundleManifest = legacy ? legacyToCurrent(parsed.data as Parameters<typeof legacyToCurrent>[0]) : parsed.data as BundleManifest;
  // manifest-level problems come first; the file and tensor checks below still run
  const edited: string[] = [];
  if (m.formatVersion === 2 && m.plan !== undefined)
    edited.push(`manifest.json formatVersion: 2, but the manifest carries a plan (format 2 has no plan; plans came with format 3): the manifest was altered after export; re-export the bundle with \`dejavu export-bundle\``);
  if (manifestChecksum(raw as Record<string, unknown>) !== m.manifestSha256)
    edited.push('manifest.json was modified after export (its content no longer matches manifestSha256): re-export the bundle, or restore the manifest');
  edited.push(...sealedCopyProblems(dir, m.predictorsFile, raw as Record<string, unknown>));
  for (const [f, want] of Object.entries(m.files)) {
    const p = path.join(dir, f);
    if (f.includes('/') || f.includes('..')) { problems.push(`file name ${f} must be a plain name`); continue; }
    if (!fs.existsSync(p)) { problems.push(`${f} is missing`); continue; }
    const size = fs.statSync(p).size;
    if (size !== want.bytes) problems.push(`${f} is ${size} bytes, the manifest says ${want.bytes} (truncated or replaced)`);
    else if (sha256File(p) !== want.sha256) problems.push(`${f} checksum mismatch (the file was modified after export)`);
  }
  for (const need of [m.predictorsFile, ...(m.neuronMajorFile ? [m.neuronMajorFile] : [])]) if (!m.files[need]) problems.push(`${need} is not listed in files`);
  if (!problems.length) {
    const check = (file: string, refs: { name: string; shape: number[] }[]) => {
      let st;
      try { st = openSafetensors(path.join(dir, file)); } catch (e) { problems.push((e as Error).message); return; }
      for (const r of refs) {
        const t = st.tensors.get(r.name);
        if (!t) problems.push(`${file}: tensor ${r.name} is missing`);
        else if (JSON.stringify(t.shape) !== JSON.stringify(r.shape)) problems.push(`${file}: tensor ${r.name} has shape ${JSON.stringify(t.shape)}, manifest says ${JSON.stringify(r.shape)}`);
      }
    };
    check(m.predictorsFile, m.layers.flatMap((l) => [l.mlp, l.heads].flatMap((p) => [p?.tensors, p?.upTensors]).flatMap((t) => (t ? Object.values(t) : []))));
    const nmRefs = (nm: NonNullable<BundleManifest['layers'][number]['neuronMajor']>) =>
      [nm.up, nm.down, nm.gate, nm.upBias, nm.gateBias].filter((x): x is { name: string; shape: number[] } => !!x);
    if (m.neuronMajorFile) check(m.neuronMajorFile, m.layers.flatMap((l) => (l.neuronMajor ? nmRefs(l.neuronMajor) : [])));
    const dims = m.model.dims;
    if (m.plan) {
      const site = (s: 'mlp' | 'heads', i: number) => Boolean(m.layers.find((l) => l.layer === i)?.[s]?.tensors);
      problems.push(...planProblems(m.plan, { ...dims, activation: String(m.model.architecture.activation) as 'relu' | 'swiglu', gated: m.model.architecture.gated === true }, site));
    }
    const seen = new Set<number>();
    for (const l of m.layers) {
      if (seen.has(l.layer)) problems.push(`layer ${l.layer} is listed more than once`);
      seen.add(l.layer);
      if (l.layer >= dims.layers) problems.push(`layer ${l.layer} is beyond the model's ${dims.layers} layers`);
      if (l.mlp?.rule?.kind === 'topk' && l.mlp.rule.k > dims.ffn) problems.push(`layer ${l.layer}: MLP top-k ${l.mlp.rule.k} exceeds ffn ${dims.ffn}`);
      if (l.heads?.rule?.kind === 'topk' && l.heads.rule.k > dims.heads) problems.push(`layer ${l.layer}: head top-k ${l.heads.rule.k} exceeds heads ${dims.heads}`);
      // shapes must fit the model (not only the file): a predictor of the wrong width would break the forward pass
      const fit = (what: string, ref: { shape: number[] } | null | undefined, want: number[]) => {
        if (ref && JSON.stringify(ref.shape) !== JSON.stringify(want)) problems.push(`layer ${l.layer} ${what}: shape ${JSON.stringify(ref.shape)} does not fit the model (expected ${JSON.stringify(want)})`);
      };
      for (const [site, W] of [['mlp', dims.ffn], ['heads', dims.heads]] as const) {
        const p = l[site];
        if (!p) continue;
        const lowRank = hasLowRankWeights(p.predictor);
        if (lowRank !== Boolean(p.tensors) || (p.score === 'swiglu') !== Boolean(p.upTensors)) problems.push(`layer ${l.layer} ${site}: a ${p.predictor} predictor with ${p.score} score must ${lowRank ? '' : 'not '}have tensors${p.score === 'swiglu' ? ' and upTensors' : ''}`);
        if (site === 'mlp' && p.predictor !== 'dense' && !p.rule) problems.push(`layer ${l.layer} mlp: a ${p.predictor} predictor needs a rule`);
        for (const [name, t] of [['tensors', p.tensors], ['upTensors', p.upTensors]] as const) {
          if (!t) continue;
          fit(`${site}.${name}.fc1Weight`, t.fc1Weight, [p.rank, dims.hidden]);
          fit(`${site}.${name}.fc1Bias`, t.fc1Bias, [p.rank]);
          fit(`${site}.${name}.fc2Weight`, t.fc2Weight, [W, p.rank]);
          fit(`${site}.${name}.fc2Bias`, t.fc2Bias, [W]);
        }
      }
      const nm = l.neuronMajor;
      if (nm) {
        for (const k of ['up', 'gate', 'down'] as const) fit(`neuronMajor.${k}`, nm[k], [dims.ffn, dims.hidden]);
        for (const k of ['upBias', 'gateBias'] as const) fit(`neuronMajor.${k}`, nm[k], [dims.ffn]);
      }
    }
  }
  if (model) {
    let fp;
    try { fp = fingerprintCheckpoint(model); } catch (e) { problems.push((e as Error).message); }
    if (fp && !sameFingerprint(fp, m.model.fingerprint)) problems.push(`the bundle was made for another checkpoint than ${model} (config/weights sha256 differ)`);
  }
  return { problems: [...edited, ...problems], manifest: m };
}

/** Load a verified bundle's predictors for the forward-pass hooks. */
export function loadBundlePredictors(dir: string, model?: string): LoadedPredictors & { bundle: BundleManifest } {
  const { problems, manifest } = verifyBundle(dir, model);
  if (problems.length || !manifest) throw new UserError(`bundle ${dir} failed verification:\n  - ${problems.join('\n  - ')}`, 're-export the bundle with `dejavu export-bundle`');
  const st = openSafetensors(path.join(dir, manifest.predictorsFile));
  const mlp = new Map<number, LoadedSite>(), heads = new Map<number, LoadedSite>();
  type Refs = NonNullable<PredJson['tensors']>;
  const lowRank = (t: Refs, hidden: PredJson['hiddenActivation'], what: string, prefix: string) => {
    const [r, d] = t.fc1Weight.shape as [number, number];
    const hp = {
      fc1Weight: readTensorF32(st, t.fc1Weight.name), fc1Bias: readTensorF32(st, t.fc1Bias.name),
      fc2Weight: readTensorF32(st, t.fc2Weight.name), fc2Bias: readTensorF32(st, t.fc2Bias.name), d, r, out: t.fc2Weight.shape[0]!, hiddenActivation: hidden,
    };
    assertFinitePredictor(hp, `${what} in bundle ${dir}`, prefix, 'the bundle was exported from (or altered into) diverged predictors: retrain with a lower optim.lr and export again');
    return hp;
  };
  for (const l of manifest.layers) for (const site of ['mlp', 'heads'] as const) {
    const p = l[site];
    if (!p) continue;
    const h = p.tensors && lowRank(p.tensors, p.hiddenActivation, `layer ${l.layer} ${site === 'mlp' ? 'MLP' : 'head'} predictor`, `layers.${l.layer}.${site}`);
    const hu = p.upTensors && lowRank(p.upTensors, p.hiddenActivation, `layer ${l.layer} MLP predictor`, `layers.${l.layer}.mlp.up`);
    const entry: PredictorEntry = {
      predictor: p.predictor, score: p.score, rank: p.rank, hiddenActivation: p.hiddenActivation, input: p.input, label: p.label, rule: p.rule,
      validation: { ...p.expected, f1: 0 }, flopShare: p.flopShare, epochs: 0,
    };
    (site === 'mlp' ? mlp : heads).set(l.layer, {
      entry, sourceLayerOffset: p.input === 'x_attn[layer-1]' ? -1 : 0,
      ...(h ? { weights: fromHost(h), host: h } : {}),
      ...(hu ? { up: fromHost(hu), hostUp: hu, gateAct: gateActOf(manifest.model.architecture) } : {}),
    });
  }
  return {
    bundle: manifest, manifest: { model: { fingerprint: manifest.model.fingerprint } } as PredictorsManifest, mlp, heads,
    dispose: () => { for (const s of [...mlp.values(), ...heads.values()]) disposeSite(s); },
  };
}
