/**
 * One output-folder discipline for every stage (see docs/reliability.md):
 *  - a folder dejavu writes carries a marker file `.dejavu-output.json` ({tool, kind, identity?});
 *  - dejavu deletes or replaces only a folder with its marker of the same kind (or, for folders written before the
 *    marker existed, one whose every file is a file that kind writes and whose signature file has the right kind);
 *    never a folder holding anything else, `--overwrite` included;
 *  - whole-folder outputs are written to a temp sibling `.NAME.dejavu-tmp-PID` and renamed into place;
 *  - a lock file `.NAME.dejavu-lock` (sibling, holds the pid) makes a second writer fail fast; it is stale when its
 *    pid is dead; stale temp siblings (ours by name and marker) are swept by the next writer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { describeFsError, fsUserError, UserError } from './errors.js';
import { writeFileAtomic, writeJsonAtomic } from './fsx.js';

export type OutputKind = 'activations' | 'predictors' | 'report' | 'plan' | 'bundle' | 'workdir';
export const MARKER = '.dejavu-output.json';
export interface Marker { tool: 'dejavu'; kind: OutputKind; identity?: string }

/** writeFileAtomic / writeSafetensors temp names: .NAME.PID.MS.tmp */
const ATOMIC_TMP = String.raw`\.[^/]+\.\d+\.\d+\.tmp`;
const SIBLING = String.raw`\.[^/]+\.dejavu-(?:tmp-\d+|old-\d+|lock)`;
/** every file a kind writes (paths relative to the folder, '/'-separated), for recognizing pre-marker outputs */
const OWN_FILES: Record<OutputKind, RegExp> = {
  activations: new RegExp(String.raw`^(?:manifest\.json|summary\.json|progress\.json|${ATOMIC_TMP}|layer-\d{2,}(?:/(?:shard-\d{5,}\.arrow|\.shard-\d{5,}\.arrow\.tmp))?)$`),
  predictors: new RegExp(String.raw`^(?:predictors\.json|train-log\.jsonl|layer-\d{2,}\.safetensors|${ATOMIC_TMP})$`),
  report: new RegExp(String.raw`^(?:report\.json|report\.md|recall-vs-density\.svg|densities\.svg|perplexity-vs-density\.svg|\.inputs\.json|${ATOMIC_TMP})$`),
  plan: new RegExp(String.raw`^(?:plan\.json|report\.md|frontier\.svg|\.inputs\.json|${ATOMIC_TMP})$`),
  bundle: new RegExp(String.raw`^(?:manifest\.json|predictors\.safetensors|neuron-major\.safetensors|${ATOMIC_TMP})$`),
  workdir: new RegExp(String.raw`^(?:(?:activations-calibration|activations-heldout|predictors|report|plan|bundle)(?:/.*)?|\.bundle-inputs\.json|${SIBLING}(?:/.*)?|${ATOMIC_TMP})$`),
};
/** the file whose `kind` identifies a pre-marker output (workdir: its children are checked one by one) */
const SIGNATURE: Record<OutputKind, [string, string] | null> = {
  activations: ['manifest.json', 'dejavu-activations'], predictors: ['predictors.json', 'dejavu-predictors'],
  report: ['report.json', 'dejavu-evaluation'], plan: ['plan.json', 'dejavu-plan'], bundle: ['manifest.json', 'dejavu-bundle'], workdir: null,
};

export type OutputState =
  | { state: 'absent' | 'empty' }
  | { state: 'ours'; marker: Marker; legacy: boolean }
  | { state: 'foreign'; reason: string };

function listFiles(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[])
    .filter((e) => !e.isDirectory()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
}

/** the marker as read back; anything else (unreadable, not JSON, another shape) is no marker */
const markerSchema = z.looseObject({ tool: z.literal('dejavu'), kind: z.string(), identity: z.string().optional() });

export function readMarker(dir: string): Marker | null {
  try {
    const m: unknown = JSON.parse(fs.readFileSync(path.join(dir, MARKER), 'utf8'));
    return markerSchema.safeParse(m).success ? (m as Marker) : null;
  } catch { return null; }
}

function sample(files: string[]): string {
  return files.slice(0, 3).join(', ') + (files.length > 3 ? ` and ${files.length - 3} more` : '');
}

/** What is at `dir`: nothing, an empty folder, a folder dejavu made as `kind`, or something else. */
export function inspectOutput(dir: string, kind: OutputKind): OutputState {
  let st: fs.Stats;
  try { st = fs.statSync(dir); } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return { state: 'absent' };
    throw fsUserError(e, 'reading output folder', dir);
  }
  if (!st.isDirectory()) throw new UserError(`output folder ${dir} is a file`, 'choose a folder path for --out (dejavu never replaces a file)');
  let files: string[];
  try { files = listFiles(dir); } catch (e) { throw fsUserError(e, 'reading output folder', dir); }
  if (!files.length) return fs.readdirSync(dir).length ? { state: 'foreign', reason: 'it holds empty sub-folders' } : { state: 'empty' };
  const marker = readMarker(dir);
  if (marker) {
    if (marker.kind !== kind) return { state: 'foreign', reason: `it is a dejavu ${marker.kind} folder, not a ${kind} folder` };
    return { state: 'ours', marker, legacy: false };
  }
  const stray = files.filter((f) => !OWN_FILES[kind].test(f));
  if (stray.length) return { state: 'foreign', reason: `it holds ${sample(stray)}` };
  const sig = SIGNATURE[kind];
  if (sig) {
    let k: unknown;
    try { k = JSON.parse(fs.readFileSync(path.join(dir, sig[0]), 'utf8'))?.kind; } catch { k = undefined; }
    if (k !== sig[1]) return { state: 'foreign', reason: `it has no ${MARKER} and no ${sig[0]} of kind ${sig[1]} (it holds ${sample(files)})` };
  }
  return { state: 'ours', marker: { tool: 'dejavu', kind }, legacy: true };
}

/** Remove temp files of writeFileAtomic / writeSafetensors left in `dir` by a killed run (call with the lock held). */
export function sweepAtomicTemps(dir: string): void {
  const re = new RegExp(`^${ATOMIC_TMP}$`);
  for (const f of fs.readdirSync(dir)) if (re.test(f)) fs.rmSync(path.join(dir, f), { force: true });
}

export function foreignError(dir: string, reason: string): UserError {
  return new UserError(`output folder ${dir} was not made by dejavu (${reason})`, 'choose a new or empty --out: dejavu deletes or replaces only folders it made, --overwrite included');
}

/** Inspect and refuse anything that is not absent, empty, or ours of this kind. */
export function checkOutput(dir: string, kind: OutputKind): OutputState {
  const s = inspectOutput(dir, kind);
  if (s.state === 'foreign') throw foreignError(dir, s.reason);
  return s;
}

export function writeMarker(dir: string, kind: OutputKind, identity?: string): void {
  writeJsonAtomic(path.join(dir, MARKER), { tool: 'dejavu', kind, ...(identity !== undefined ? { identity } : {}) } satisfies Marker);
}

const sibling = (dir: string, suffix: string) => path.join(path.dirname(path.resolve(dir)), `.${path.basename(path.resolve(dir))}.${suffix}`);

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as { code?: string }).code === 'EPERM'; }
}

export interface OutputLock { file: string; release(): void }

/**
 * Take the writer lock of `dir` (creating its parent folder). A lock whose pid is dead is stale and taken over;
 * a live one is a clear UserError. Also sweeps this folder's stale temp siblings (we hold the lock, so they are).
 */
export function lockOutput(dir: string): OutputLock {
  const file = sibling(dir, 'dejavu-lock');
  try { fs.mkdirSync(path.dirname(file), { recursive: true }); } catch (e) {
    const d = describeFsError(e);
    throw d ? new UserError(`cannot create output folder ${dir}: ${d.what} (${d.code})`, d.code === 'ENOTDIR' || d.code === 'EEXIST' ? 'choose a writable --out whose parents are folders' : d.hint) : e;
  }
  for (let attempt = 0; ; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify({ pid: process.pid, startedAt: new Date().toISOString() }) + '\n', { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as { code?: string }).code !== 'EEXIST' || attempt > 0) throw fsUserError(e, 'creating the lock file of', dir);
      let pid = NaN;
      try { pid = Number(JSON.parse(fs.readFileSync(file, 'utf8')).pid); } catch { /* unreadable: stale */ }
      if (Number.isInteger(pid) && pid > 0 && pidAlive(pid))
        throw new UserError(`output folder ${dir} is being written by another dejavu process (pid ${pid})`, `wait for it to finish; if no such process runs, delete ${file}`);
      fs.rmSync(file, { force: true });
    }
  }
  sweepStale(dir);
  let held = true;
  return { file, release: () => { if (held) { held = false; fs.rmSync(file, { force: true }); } } };
}

/** Remove this folder's stale temp siblings: ours by name and by marker (or empty). Never anything else. */
function sweepStale(dir: string): void {
  const parent = path.dirname(path.resolve(dir)), base = path.basename(path.resolve(dir));
  const esc = base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const ours = new RegExp(`^\\.${esc}\\.dejavu-(?:tmp|old)-\\d+$`);
  const legacyBundle = new RegExp(`^${esc}\\.tmp-(\\d+)$`); // export-bundle temp folders of the previous version
  for (const f of fs.readdirSync(parent)) {
    const p = path.join(parent, f);
    if (ours.test(f)) {
      if (readMarker(p) || (fs.statSync(p).isDirectory() && fs.readdirSync(p).length === 0)) fs.rmSync(p, { recursive: true, force: true });
      continue;
    }
    const m = legacyBundle.exec(f);
    if (m && !pidAlive(Number(m[1])) && fs.statSync(p).isDirectory() && listFiles(p).every((x) => OWN_FILES.bundle.test(x))) fs.rmSync(p, { recursive: true, force: true });
  }
}

export interface OutputWriter {
  /** the temp folder to write into */
  tmp: string;
  /** what was at the destination before */
  before: OutputState;
  /** move the temp folder into place (replacing the old output) and release the lock */
  commit(): void;
  /** remove the temp folder and release the lock (nothing half-written stays) */
  abort(): void;
}

/**
 * Start writing a whole-folder output: lock, refuse anything not ours, make the temp sibling with the marker.
 * `mayReplace(before)` decides whether an existing output of ours may be replaced (throw a UserError to refuse).
 */
export function beginOutput(dir: string, kind: OutputKind, opts: { identity?: string; mayReplace?: (s: OutputState) => void } = {}): OutputWriter {
  const lock = lockOutput(dir);
  let tmp = '';
  try {
    const before = checkOutput(dir, kind);
    opts.mayReplace?.(before);
    tmp = sibling(dir, `dejavu-tmp-${process.pid}`);
    try { fs.mkdirSync(tmp); writeMarker(tmp, kind, opts.identity); } catch (e) { throw fsUserError(e, 'writing', dir); }
    return {
      tmp, before,
      commit() {
        const old = sibling(dir, `dejavu-old-${process.pid}`);
        try {
          if (fs.existsSync(dir)) fs.renameSync(dir, old);
          fs.renameSync(tmp, dir);
        } catch (e) {
          if (fs.existsSync(old) && !fs.existsSync(dir)) fs.renameSync(old, dir);
          fs.rmSync(tmp, { recursive: true, force: true });
          lock.release();
          throw fsUserError(e, 'writing', dir);
        }
        fs.rmSync(old, { recursive: true, force: true });
        lock.release();
      },
      abort() { fs.rmSync(tmp, { recursive: true, force: true }); lock.release(); },
    };
  } catch (e) {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    lock.release();
    throw e;
  }
}

/** Run `write(tmp)` into a new output folder and commit it; on any failure nothing is left (fs errors become UserErrors). */
export async function writeOutput<T>(w: OutputWriter, dir: string, write: (tmp: string) => T | Promise<T>): Promise<T> {
  let r: T;
  try { r = await write(w.tmp); } catch (e) { w.abort(); throw fsUserError(e, 'writing', dir); }
  w.commit();
  return r;
}

/**
 * The one "is this output current" test for outputs whose inputs are recorded beside them (pipeline: the report's
 * `.inputs.json`, the workdir's `.bundle-inputs.json`): the recorded identity equals `identity` (a string of the
 * inputs' hashes and the resolved config) and the output itself is complete (`complete`, checked only then).
 * Collect and train record their identity in their own manifest and compare it the same way.
 */
export function outputIsCurrent(idFile: string, identity: string, complete: () => boolean): boolean {
  let recorded: string;
  try { recorded = fs.readFileSync(idFile, 'utf8'); } catch { return false; }
  return recorded === identity && complete();
}

/** Record the identity `outputIsCurrent` compares against (after the output is complete). */
export function recordOutputInputs(idFile: string, identity: string): void {
  writeFileAtomic(idFile, identity);
}
