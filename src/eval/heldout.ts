/**
 * The held-out text of an activations dataset, as evaluate-recall (perplexity) and plan (search and verification)
 * read it: the file its manifest names, or --data. When it is that file, it must be the text the activations were
 * collected from: its sha256 is compared with manifest.data.sha256 before it is read and again after, so recall (on
 * the activations) and perplexity (on the text) measure the same text.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ActivationsManifest } from '../activations/dataset.js';
import { isPretokenized, packSequences, readDocuments } from '../activations/data.js';
import type { ModelConfig } from '../model/config.js';
import { loadTokenizer } from '../tokenizer.js';
import { fsUserError, UserError } from '../util/errors.js';
import { sha256File } from '../util/fsx.js';

/** the file the held-out text is read from, and whether it is the one the activations were collected from */
function textFile(m: ActivationsManifest, data: string | undefined): { file: string; collected: boolean } {
  const file = data ?? m.data.file;
  return { file, collected: path.resolve(file) === path.resolve(m.data.file) };
}

/**
 * Exit 2 when the text the activations in `activations` were collected from (or `data`, when it names that file)
 * no longer has the sha256 their manifest records; `after`: checked again after reading (it changed meanwhile).
 */
export function checkHeldoutText(activations: string, m: ActivationsManifest, data: string | undefined, stage: string, after = false): void {
  const { file, collected } = textFile(m, data);
  if (!collected) return; // another text, named on purpose (--data)
  let now: string;
  try {
    if (!fs.statSync(file).isFile()) return; // the reader says what is wrong with it
    now = sha256File(file);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return; // the reader says it does not exist
    throw fsUserError(e, 'reading', file);
  }
  if (now === m.data.sha256) return;
  const mf = path.join(activations, 'manifest.json');
  throw new UserError(after
    ? `${file} changed while ${stage} read it (its sha256 is no longer the ${m.data.sha256.slice(0, 12)}… recorded in ${mf})`
    : `${file} is not the text the activations in ${activations} were collected from (its sha256 ${now.slice(0, 12)}… differs from the ${m.data.sha256.slice(0, 12)}… recorded in ${mf})`,
  `restore ${file}, or collect the held-out activations again from the text you mean (\`dejavu collect-activations --data ${file}\`), then re-run ${stage}`);
}

/** The held-out text as sequences of `seqLen` tokens (at most `maxTokens`), checked against the manifest before and after. */
export async function heldoutSequences(o: { activations: string; manifest: ActivationsManifest; data: string | undefined; model: string; config: ModelConfig;
    seqLen: number; maxTokens: number; stage: string }): Promise<number[][]> {
  checkHeldoutText(o.activations, o.manifest, o.data, o.stage);
  const file = textFile(o.manifest, o.data).file;
  const tokenizer = (await isPretokenized(file)) ? null : loadTokenizer(o.model);
  const seqs: number[][] = [];
  for await (const s of packSequences(readDocuments(file), { seqLen: o.seqLen, cfg: o.config, tokenizer, maxTokens: o.maxTokens, source: file })) seqs.push(s);
  checkHeldoutText(o.activations, o.manifest, o.data, o.stage, true);
  return seqs;
}
