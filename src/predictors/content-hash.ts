/**
 * The content hash of a predictors folder: what evaluate-recall records in its report and export-bundle compares,
 * so a report is tied to the weights it measured, not to a folder path (a retrain into the same folder changes it).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { sha256, sha256File } from '../util/fsx.js';

/** sha256 over "name sha256\n" lines of predictors.json and every .safetensors file in the folder (sorted by name). */
export function predictorsContentHash(dir: string): string {
  if (!fs.existsSync(path.join(dir, 'predictors.json'))) throw new UserError(`${dir} is not a predictors folder (no predictors.json)`, 'pass a folder written by `dejavu train-predictors`');
  const files = ['predictors.json', ...fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort()];
  return sha256(files.map((f) => `${f} ${sha256File(path.join(dir, f))}\n`).join(''));
}

/**
 * Hashes are of the inputs as loaded: a stage takes the content hash before it loads the predictors and checks it
 * here before it writes, so a retrain into the same folder meanwhile is an error, not a result tied to the wrong
 * weights.
 */
export function checkPredictorsUnchanged(dir: string, loaded: string, stage: string): void {
  let now: string;
  try { now = predictorsContentHash(dir); } catch { now = 'gone'; }
  if (now !== loaded)
    throw new UserError(`predictors in ${dir} changed while ${stage} ran (content sha256 ${loaded.slice(0, 12)}… when loaded, ${now === 'gone' ? 'no predictors.json' : `${now.slice(0, 12)}…`} now)`,
      `wait until whatever rewrites ${dir} (train-predictors?) has finished, then re-run ${stage}`);
}
