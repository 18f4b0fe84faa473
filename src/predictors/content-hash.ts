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
