/**
 * Whether a stage's output is current: made from the same inputs and settings, and the output the stage wrote. One
 * rule per stage, beside it (collectCurrent, trainCurrent, evaluateCurrent, planCurrent, exportCurrent), used by the
 * stage itself (a current output: nothing to do) and by the pipeline (a current stage is skipped). Collect and train
 * record their identity in their own manifest; evaluate, plan and export keep a sealed record (`.inputs.json` in their
 * output folder) of what the output was made from and that output's seal, written after the output.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { canonicalJson } from '../util/canonical-json.js';
import { isUserError } from '../util/errors.js';
import { readSealedArtifact, writeArtifact } from '../util/json-artifact.js';

/** current: the output as read back; otherwise why not (null: there is no output yet, a first run) */
export type Currency<T> = { current: true; value: T } | { current: false; why: string | null };

const stageRecordSchema = z.looseObject({ kind: z.literal('dejavu-stage-record'), inputs: z.unknown(), output: z.string().regex(/^[0-9a-f]{64}$/), sealSha256: z.string() });
export const RECORD = '.inputs.json';

/** a stage's record: what its output (`file`, in `dir`) is made from (`inputs`: hashes and resolved config, computed when needed) */
export interface StageRecord { name: string; dir: string; file: string; inputs: () => unknown }
/** read the stage's output back (its own seal checked): the value and that seal */
export type ReadOutput<T> = () => { value: T; seal: string };

/**
 * The rule for a recorded stage: current when its record (sealed) reads back, holds the same inputs (hashes and
 * resolved config), and the output reads back (its own seal checked) with the seal the record holds.
 */
export function recordedCurrent<T>(s: StageRecord, read: ReadOutput<T>): Currency<T> {
  const rec = path.join(s.dir, RECORD);
  if (!fs.existsSync(rec)) return { current: false, why: fs.existsSync(path.join(s.dir, s.file)) ? `${s.dir} holds no record of what it was made from (${RECORD})` : null };
  try {
    const r = readSealedArtifact(stageRecordSchema, rec, 'stage record', `delete ${rec}: ${s.name} runs again`);
    if (canonicalJson(r.inputs) !== canonicalJson(s.inputs())) return { current: false, why: 'its inputs or settings changed' };
    const o = read();
    if (o.seal === r.output) return { current: true, value: o.value };
    return { current: false, why: `${path.join(s.dir, s.file)} is not the one ${s.name} wrote here (its seal differs from the one recorded in ${rec})` };
  } catch (e) {
    if (!isUserError(e) && (e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // an input gone: the stage says which
    return { current: false, why: e instanceof Error ? e.message.split('\n')[0]! : String(e) };
  }
}

/** After the stage wrote its output: record it (its seal) with the inputs it was made from. */
export function writeRecord(s: StageRecord, seal: string): void {
  writeArtifact(stageRecordSchema, { kind: 'dejavu-stage-record', inputs: s.inputs(), output: seal }, path.join(s.dir, RECORD), 'stage record', { seal: true });
}
