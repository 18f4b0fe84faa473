/**
 * One data file split into calibration and held-out parts, for `dejavu pipeline --data FILE` (no --heldout): the last
 * HELDOUT_SHARE of its documents (JSONL: lines; at least one each side) are held out, the rest calibrates. A plain-text
 * file is one document: it is cut at the first paragraph break (blank line) after 90% of its characters (else at the
 * next place the tokenizer would split anyway). Deterministic (same file, same parts); the parts and a record
 * (split.json: source sha256, rule, counts, parts' sha256) are written to a folder the caller owns, temp + rename, and
 * left as they are when the record says they were made from this very file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { fsUserError, UserError, withFsErrors } from '../util/errors.js';
import { sha256File, tempPathFor, writeAll, writeJsonAtomic } from '../util/fsx.js';
import { isJsonlName, readDocuments } from './data.js';

export const HELDOUT_SHARE = 0.1;
const RULE_JSONL = `the last ${100 * HELDOUT_SHARE}% of the documents (lines; at least one) are held out, the rest calibrates`;
const RULE_TEXT = `one plain-text document: cut at the first blank line after ${100 * (1 - HELDOUT_SHARE)}% of its characters; the rest is held out`;

const splitRecordSchema = z.strictObject({
  kind: z.literal('dejavu-data-split'), source: z.string(), sourceSha256: z.string(), rule: z.string(),
  calibration: z.strictObject({ file: z.string(), documents: z.number(), sha256: z.string() }),
  heldout: z.strictObject({ file: z.string(), documents: z.number(), sha256: z.string() }),
});
export type SplitRecord = z.infer<typeof splitRecordSchema>;

/** Write `chunks` to `target` through a temp sibling, renamed into place. */
async function writeStream(target: string, chunks: AsyncIterable<string>): Promise<void> {
  const tmp = tempPathFor(target);
  try {
    const fd = fs.openSync(tmp, 'w');
    try { for await (const c of chunks) writeAll(fd, Buffer.from(c, 'utf8')); fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
    fs.renameSync(tmp, target);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw fsUserError(e, 'writing', target);
  }
}

function readRecord(file: string): SplitRecord | null {
  try { return splitRecordSchema.parse(JSON.parse(fs.readFileSync(file, 'utf8'))); } catch { return null; }
}

/** Split `file` into `dir`/split-calibration.EXT and `dir`/split-heldout.EXT (dir exists); returns the record. */
export async function splitData(file: string, dir: string): Promise<SplitRecord & { reused: boolean }> {
  const jsonl = isJsonlName(file), ext = jsonl ? 'jsonl' : 'txt';
  const cal = path.join(dir, `split-calibration.${ext}`), held = path.join(dir, `split-heldout.${ext}`), recFile = path.join(dir, 'split.json');
  let n = 0, chars = 0;
  for await (const d of readDocuments(file)) { if (!('more' in d && d.more)) n++; if ('text' in d) chars += d.text.length; } // validates the file too
  const sourceSha256 = sha256File(file);
  const old = readRecord(recFile);
  if (old && old.sourceSha256 === sourceSha256 && old.source === path.resolve(file) && fs.existsSync(cal) && fs.existsSync(held)
    && sha256File(cal) === old.calibration.sha256 && sha256File(held) === old.heldout.sha256) return { ...old, reused: true };
  let counts: [number, number];
  if (jsonl) {
    if (n < 2) throw new UserError(`data file ${file} holds ${n} document${n === 1 ? '' : 's'}: a split into calibration and held-out text needs at least 2`, 'add documents, or pass the held-out text separately with --heldout FILE');
    const nHeld = Math.max(1, Math.round(n * HELDOUT_SHARE));
    counts = [n - nHeld, nHeld];
    const part = (from: number, to: number) => (async function* () {
      let i = 0;
      for await (const d of readDocuments(file)) { if (i >= from && i < to) yield JSON.stringify('ids' in d ? { ids: d.ids } : { text: d.text }) + '\n'; i++; }
    })();
    await writeStream(cal, part(0, n - nHeld));
    await writeStream(held, part(n - nHeld, n));
  } else {
    // one document in pieces (each after the first starts at a whitespace the tokenizer splits at anyway)
    const target = Math.floor(chars * (1 - HELDOUT_SHARE));
    let cutAt = -1; // characters before the cut
    let seen = 0;
    for await (const d of readDocuments(file)) {
      if (!('text' in d)) continue;
      if (seen + d.text.length > target) {
        const m = /\n[ \t]*\n\s*/.exec(d.text.slice(Math.max(0, target - seen)));
        if (m) { cutAt = Math.max(seen, target) + m.index + m[0].length; break; }
        if (d.more) { cutAt = seen + d.text.length; break; }
        const w = /\s+/.exec(d.text.slice(Math.max(0, target - seen)));
        if (w) { cutAt = Math.max(seen, target) + w.index + w[0].length; break; }
      }
      seen += d.text.length;
    }
    if (cutAt <= 0 || cutAt >= chars) throw new UserError(`data file ${file} (one plain-text document of ${chars} characters) has no place to cut off a held-out part`, 'pass the held-out text separately with --heldout FILE');
    const part = (from: number, to: number) => (async function* () {
      let at = 0;
      for await (const d of readDocuments(file)) {
        if (!('text' in d)) continue;
        const s = d.text.slice(Math.max(0, from - at), Math.max(0, to - at));
        if (s) yield s;
        at += d.text.length;
      }
    })();
    await writeStream(cal, part(0, cutAt));
    await writeStream(held, part(cutAt, chars));
    counts = [1, 1];
  }
  const rec: SplitRecord = {
    kind: 'dejavu-data-split', source: path.resolve(file), sourceSha256, rule: jsonl ? RULE_JSONL : RULE_TEXT,
    calibration: { file: cal, documents: counts[0], sha256: sha256File(cal) }, heldout: { file: held, documents: counts[1], sha256: sha256File(held) },
  };
  withFsErrors('writing', recFile, () => writeJsonAtomic(recFile, rec));
  return { ...rec, reused: false };
}
