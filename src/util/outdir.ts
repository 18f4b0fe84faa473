/**
 * One output-folder discipline for every stage (see docs/reliability.md):
 *  - a folder dejavu writes carries a marker file `.dejavu-output.json` ({tool, kind, identity?});
 *  - dejavu deletes or replaces only a folder whose every entry is a regular file (or sub-folder) that kind writes, and
 *    that carries its marker of the same kind (or, for folders written before the marker existed, whose signature file
 *    has the right kind); never a folder holding anything else or a symbolic link anywhere, `--overwrite` included;
 *  - nothing is locked or created for an --out before it has been checked (the file-system root is never one);
 *  - whole-folder outputs are written to a temp sibling `.NAME.dejavu-tmp-PID` and renamed into place; an old output
 *    that cannot be removed then is left with a warning (the command succeeds);
 *  - a lock file `.NAME.dejavu-lock` (sibling, holds the pid) makes a second writer fail fast; it is stale when its
 *    pid is dead; stale temp siblings (ours by name and marker) are swept by the next writer (or left with a warning).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { describeFsError, fsUserError, UserError } from './errors.js';
import { writeJsonAtomic } from './fsx.js';

export type OutputKind = 'activations' | 'predictors' | 'report' | 'plan' | 'bundle' | 'workdir';
export const MARKER = '.dejavu-output.json';
export interface Marker { tool: 'dejavu'; kind: OutputKind; identity?: string }

/** writeFileAtomic / writeSafetensors temp names: .NAME.PID.MS.tmp */
const ATOMIC_TMP = String.raw`\.[^/]+\.\d+\.\d+\.tmp`;
const SIBLING = String.raw`\.[^/]+\.dejavu-(?:tmp-\d+|old-\d+|lock)`;
const MARKER_RE = String.raw`\.dejavu-output\.json`;
const STAGES = 'activations-calibration|activations-heldout|predictors|report|plan|bundle';
/** every file a kind writes (paths relative to the folder, '/'-separated): a folder holding anything else is not all ours */
const OWN_FILES: Record<OutputKind, RegExp> = {
  activations: new RegExp(String.raw`^(?:${MARKER_RE}|manifest\.json|summary\.json|progress\.json|${ATOMIC_TMP}|layer-\d{2,}/(?:shard-\d{5,}\.arrow|\.shard-\d{5,}\.arrow\.tmp))$`),
  predictors: new RegExp(String.raw`^(?:${MARKER_RE}|predictors\.json|train-log\.jsonl|layer-\d{2,}\.safetensors|${ATOMIC_TMP})$`),
  report: new RegExp(String.raw`^(?:${MARKER_RE}|report\.json|report\.md|recall-vs-density\.svg|densities\.svg|perplexity-vs-density\.svg|\.inputs\.json|${ATOMIC_TMP})$`),
  plan: new RegExp(String.raw`^(?:${MARKER_RE}|plan\.json|report\.md|frontier\.svg|\.inputs\.json|${ATOMIC_TMP})$`),
  bundle: new RegExp(String.raw`^(?:${MARKER_RE}|manifest\.json|\.inputs\.json|predictors\.safetensors|neuron-major\.safetensors|${ATOMIC_TMP})$`),
  workdir: new RegExp(String.raw`^(?:${MARKER_RE}|\.bundle-inputs\.json|split\.json|split-(?:calibration|heldout)\.(?:jsonl|txt)|${SIBLING}|${ATOMIC_TMP}|jobs/(?:[a-z0-9-]+\.(?:sbatch|sh|yaml|json)|[a-z0-9-]+-\d+(?:_\d+)?\.log|${ATOMIC_TMP}))$`),
};
/** the sub-folders a kind writes: entered and checked file by file, or (the workdir's stage folders and their temp
 * siblings) taken whole, without entering them: the pipeline checks each stage folder as its own kind */
const OWN_DIRS: Record<OutputKind, { enter?: RegExp; whole?: RegExp }> = {
  activations: { enter: /^layer-\d{2,}$/ }, predictors: {}, report: {}, plan: {}, bundle: {},
  workdir: { enter: /^jobs$/, whole: new RegExp(String.raw`^(?:${STAGES}|${SIBLING}|shards)$`) }, // jobs/, shards/: pipeline --scheduler (issue 26)
};
/** the file whose `kind` identifies a pre-marker output (workdir: its children are checked one by one) */
const SIGNATURE: Record<OutputKind, [string, string] | null> = {
  activations: ['manifest.json', 'dejavu-activations'], predictors: ['predictors.json', 'dejavu-predictors'],
  report: ['report.json', 'dejavu-evaluation'], plan: ['plan.json', 'dejavu-plan'], bundle: ['manifest.json', 'dejavu-bundle'], workdir: null,
};

export type OutputState =
  | { state: 'absent' | 'empty' }
  | { state: 'ours'; marker: Marker; legacy: boolean }
  | { state: 'foreign'; reason: string; error: UserError };

/** What a folder holds, read without following links: the files of `kind` (`whole` folders end in '/'), the entries it
 * did not write (stray) and the symbolic links (never followed, whatever their name). */
interface Listing { entries: number; files: string[]; stray: string[]; links: string[] }

function listOutput(dir: string, kind: OutputKind): Listing {
  const l: Listing = { entries: 0, files: [], stray: [], links: [] };
  const { enter, whole } = OWN_DIRS[kind];
  const visit = (rel: string) => {
    const abs = rel ? path.join(dir, rel) : dir;
    let entries: fs.Dirent[];
    try { entries = fs.readdirSync(abs, { withFileTypes: true }); } catch (e) { throw fsUserError(e, 'reading output folder', abs); }
    if (!rel) l.entries = entries.length;
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isSymbolicLink()) l.links.push(r);
      else if (e.isDirectory()) {
        if (enter?.test(r)) visit(r); else if (whole?.test(r)) l.files.push(`${r}/`); else l.stray.push(`${r}/`);
      } else if (e.isFile() && OWN_FILES[kind].test(r)) l.files.push(r);
      else l.stray.push(e.isFile() ? r : `${r} (not a regular file)`);
    }
  };
  visit('');
  return l;
}

/** the marker as read back; anything else (unreadable, not JSON, another shape) is no marker */
const markerSchema = z.looseObject({ tool: z.literal('dejavu'), kind: z.string(), identity: z.string().optional() });

export function readMarker(dir: string): Marker | null {
  try {
    const f = path.join(dir, MARKER);
    if (!fs.lstatSync(f).isFile()) return null; // a link or anything else is no marker of ours
    const m: unknown = JSON.parse(fs.readFileSync(f, 'utf8'));
    return markerSchema.safeParse(m).success ? (m as Marker) : null;
  } catch { return null; }
}

function sample(files: string[]): string {
  return files.slice(0, 3).join(', ') + (files.length > 3 ? ` and ${files.length - 3} more` : '');
}

/** bytes per file name (Linux and macOS file systems); the output's temp and lock siblings add 20 to its own name */
const NAME_MAX = 255, SIBLING_EXTRA = 20;

/** Refuse an --out that no folder of ours can be at (before anything is created for it): the root, over-long names. */
function checkOutputPath(dir: string): void {
  const r = path.resolve(dir), base = path.basename(r);
  if (r === path.parse(r).root) throw new UserError(`output folder ${dir} is the file-system root, not a folder dejavu can own`, 'choose a new or empty folder for --out, e.g. ./out');
  const long = r.split(path.sep).find((c) => Buffer.byteLength(c) > NAME_MAX) ?? (Buffer.byteLength(base) > NAME_MAX - SIBLING_EXTRA ? base : undefined);
  if (long !== undefined)
    throw new UserError(`output folder ${dir}: the name ${long.slice(0, 16)}… is too long (${Buffer.byteLength(long)} bytes)`, `choose a shorter --out: file names have at most ${NAME_MAX} bytes, and the output folder's own name at most ${NAME_MAX - SIBLING_EXTRA} (dejavu writes .NAME.dejavu-tmp-PID beside it)`);
}

/**
 * What is at `dir`: nothing, an empty folder, a folder dejavu made as `kind` holding only what that kind writes, or
 * something else. Links inside are never followed (one anywhere is refused); `dir` itself may be a link to a folder.
 */
export function inspectOutput(dir: string, kind: OutputKind): OutputState {
  checkOutputPath(dir);
  let st: fs.Stats;
  try { st = fs.statSync(dir); } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return { state: 'absent' }; // (below a file: lockOutput says so, creating nothing)
    throw fsUserError(e, 'reading output folder', dir);
  }
  if (!st.isDirectory()) throw new UserError(`output folder ${dir} is a file`, 'choose a folder path for --out (dejavu never replaces a file)');
  const l = listOutput(dir, kind);
  if (!l.entries) return { state: 'empty' };
  const foreign = (reason: string, error = foreignError(dir, reason)): OutputState => ({ state: 'foreign', reason, error });
  const marker = l.files.includes(MARKER) ? readMarker(dir) : null;
  if (marker && marker.kind !== kind) return foreign(`it is a dejavu ${marker.kind} folder, not a ${kind} folder`);
  if (!marker && (l.stray.length || l.links.length)) return foreign(`it holds ${sample([...l.stray, ...l.links.map((f) => `${f} (a symbolic link)`)])}`);
  if (l.links.length) {
    const to = (f: string) => { try { return ` -> ${fs.readlinkSync(path.join(dir, f))}`; } catch { return ''; } };
    const links = sample(l.links.map((f) => f + to(f)));
    return foreign(`it holds the symbolic link ${links}`, new UserError(`output folder ${dir} holds a symbolic link: ${links} (dejavu never follows links inside its output folders)`,
      'put the folder or file itself in place of the link (or move the link out of the folder), or choose another --out'));
  }
  if (l.stray.length) {
    const reason = `it holds ${sample(l.stray)}, which dejavu did not write`;
    return foreign(reason, new UserError(`output folder ${dir} holds files dejavu did not write: ${sample(l.stray)}`,
      `move ${l.stray.length === 1 ? l.stray[0] : 'them'} out of the folder, or choose another --out: dejavu deletes or replaces only what it wrote`));
  }
  if (marker) return { state: 'ours', marker, legacy: false };
  const sig = SIGNATURE[kind];
  if (sig) {
    let k: unknown;
    try { k = JSON.parse(fs.readFileSync(path.join(dir, sig[0]), 'utf8'))?.kind; } catch { k = undefined; }
    if (k !== sig[1]) return foreign(`it has no ${MARKER} and no ${sig[0]} of kind ${sig[1]} (it holds ${sample(l.files)})`);
  }
  return { state: 'ours', marker: { tool: 'dejavu', kind }, legacy: true };
}

/** Remove temp files of writeFileAtomic / writeSafetensors left in `dir` by a killed run (call with the lock held). */
export function sweepAtomicTemps(dir: string): void {
  const re = new RegExp(`^${ATOMIC_TMP}$`);
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isFile() && re.test(e.name)) fs.rmSync(path.join(dir, e.name), { force: true });
}

/**
 * Remove what a `kind` folder holds that `kind` writes (regular files by name, then its emptied sub-folders), and
 * nothing else: links are never followed, a file dejavu did not write stays. Returns whether `dir` is now empty.
 */
export function removeOwned(dir: string, kind: OutputKind): boolean {
  const l = listOutput(dir, kind);
  for (const f of l.files) if (!f.endsWith('/')) fs.rmSync(path.join(dir, f), { force: true });
  for (const e of fs.readdirSync(dir, { withFileTypes: true }))
    if (e.isDirectory() && OWN_DIRS[kind].enter?.test(e.name) && !fs.readdirSync(path.join(dir, e.name)).length) fs.rmdirSync(path.join(dir, e.name));
  return fs.readdirSync(dir).length === 0;
}

export function foreignError(dir: string, reason: string): UserError {
  return new UserError(`output folder ${dir} was not made by dejavu (${reason})`, 'choose a new or empty --out: dejavu deletes or replaces only folders it made, --overwrite included');
}

/** Inspect and refuse anything that is not absent, empty, or ours of this kind (holding only what this kind writes). */
export function checkOutput(dir: string, kind: OutputKind): OutputState {
  const s = inspectOutput(dir, kind);
  if (s.state === 'foreign') throw s.error;
  return s;
}

export function writeMarker(dir: string, kind: OutputKind, identity?: string): void {
  writeJsonAtomic(path.join(dir, MARKER), { tool: 'dejavu', kind, ...(identity !== undefined ? { identity } : {}) } satisfies Marker);
}

const sibling = (dir: string, suffix: string) => path.join(path.dirname(path.resolve(dir)), `.${path.basename(path.resolve(dir))}.${suffix}`);

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as { code?: string }).code === 'EPERM'; }
}

/** things the user must see once the output is in place (a leftover dejavu could not remove): stderr, also with --quiet */
function warn(msg: string): void { process.stderr.write(`warning: ${msg}\n`); }

/** Remove a leftover of ours; when that fails (e.g. a read-only old output), say where it is and go on. */
function removeLeftover(p: string): string | null {
  try { fs.rmSync(p, { recursive: true, force: true }); return null; } catch (e) {
    const d = describeFsError(e);
    warn(`could not remove the old output ${p} (${d ? `${d.what}, ${d.code}` : (e as Error).message}); it is not in use: delete it when you can`);
    return p;
  }
}

export interface OutputLock { file: string; release(): void; /** the output as checked with the lock held */ before: OutputState }

/**
 * Take the writer lock of `dir` (creating its parent folder), after checking that `dir` is absent, empty or ours of
 * `kind` (nothing is created for an output that is refused), and check it again with the lock held. A lock whose pid
 * is dead is stale and taken over; a live one is a clear UserError. Also sweeps this folder's stale temp siblings.
 */
export function lockOutput(dir: string, kind: OutputKind): OutputLock {
  checkOutput(dir, kind);
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
  let held = true;
  const release = () => { if (held) { held = false; fs.rmSync(file, { force: true }); } };
  try {
    sweepStale(dir);
    return { file, release, before: checkOutput(dir, kind) };
  } catch (e) { release(); throw e; }
}

/**
 * Remove this folder's stale temp siblings: ours by name and by marker (or empty), never a link, never anything else.
 * One that cannot be removed (e.g. a read-only old output) is left with a warning: it never blocks a writer.
 */
function sweepStale(dir: string): void {
  const parent = path.dirname(path.resolve(dir)), base = path.basename(path.resolve(dir));
  const esc = base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const ours = new RegExp(`^\\.${esc}\\.dejavu-(?:tmp|old)-\\d+$`);
  const legacyBundle = new RegExp(`^${esc}\\.tmp-(\\d+)$`); // export-bundle temp folders of the previous version
  for (const e of fs.readdirSync(parent, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const p = path.join(parent, e.name), m = legacyBundle.exec(e.name);
    try {
      if (ours.test(e.name) ? readMarker(p) || fs.readdirSync(p).length === 0
        : m && !pidAlive(Number(m[1])) && ((l) => !l.stray.length && !l.links.length)(listOutput(p, 'bundle'))) removeLeftover(p);
    } catch (err) { warn(`could not look into the leftover ${p} (${(err as Error).message}); left as it is`); }
  }
}

export interface OutputWriter {
  /** the temp folder to write into */
  tmp: string;
  /** what was at the destination before */
  before: OutputState;
  /**
   * Move the temp folder into place (replacing the old output) and release the lock. Once the new output is in place
   * this succeeds: an old output that cannot be removed is returned (and warned about), never an error.
   */
  commit(): string | null;
  /** remove the temp folder and release the lock (nothing half-written stays) */
  abort(): void;
}

/**
 * Start writing a whole-folder output: lock, refuse anything not ours, make the temp sibling with the marker.
 * `mayReplace(before)` decides whether an existing output of ours may be replaced (throw a UserError to refuse).
 */
export function beginOutput(dir: string, kind: OutputKind, opts: { identity?: string; mayReplace?: (s: OutputState) => void } = {}): OutputWriter {
  const lock = lockOutput(dir, kind);
  let tmp = '';
  try {
    const before = lock.before;
    opts.mayReplace?.(before);
    tmp = sibling(dir, `dejavu-tmp-${process.pid}`);
    try { fs.mkdirSync(tmp); writeMarker(tmp, kind, opts.identity); } catch (e) { throw fsUserError(e, 'writing', dir); }
    return {
      tmp, before,
      commit() {
        const old = sibling(dir, `dejavu-old-${process.pid}`);
        try {
          try {
            if (fs.existsSync(dir)) fs.renameSync(dir, old);
            fs.renameSync(tmp, dir);
          } catch (e) {
            if (fs.existsSync(old) && !fs.existsSync(dir)) fs.renameSync(old, dir);
            fs.rmSync(tmp, { recursive: true, force: true });
            throw fsUserError(e, 'writing', dir);
          }
          return fs.existsSync(old) ? removeLeftover(old) : null;
        } finally { lock.release(); }
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
