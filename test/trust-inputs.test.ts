/**
 * Issue #20 "Trust, round two", the input-handling items of the 2026-12-01 reliability sweep (numbered as there):
 * data, --config, tokenizer.json and checkpoint files are regular files of sane size, read with that in mind; worker
 * counts are capped at the cores; --set never walks into a prototype; EMFILE at start-up is exit 2. Real CLI runs
 * (in-process `cli()`; a spawned bin/dejavu.js where a hang, a crash or the exit code itself is the point).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstInvalidUtf8, packSequences, readDocuments, textPieces, type Doc } from '../src/activations/data.js';
import { layerDir } from '../src/activations/dataset.js';
import { openCheckpoint } from '../src/checkpoint/checkpoint.js';
import { readYamlFile, setPath } from '../src/config/load.js';
import { normalizeConfig } from '../src/model/config.js';
import { loadTokenizer } from '../src/tokenizer.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
const BIN = path.join(REPO, 'bin', 'dejavu.js');
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const TMP = tmpDir('dejavu-trust-inputs-');
const DATA = path.join(TMP, 'd.jsonl');
const ACTS = path.join(TMP, 'acts');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

const WORDS = 'the whale ship sea captain ahab ishmael white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
function sampleText(n: number): string {
  let s = 12345;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
  return Array.from({ length: n }, (_, d) => JSON.stringify({ text: Array.from({ length: 40 + (d % 7) * 5 }, () => WORDS[Math.floor(rnd() * WORDS.length)]).join(' ') + '.' })).join('\n') + '\n';
}
const collectArgs = (out: string, data = DATA, extra: string[] = []) => ['collect-activations', '--model', MODEL, '--data', data, '--out', out, '--seq-len', '16',
  '--max-tokens', '256', '--batch-size', '4', '--set', 'rowsPerShard=64', '--workers', '1', '--backend', 'wasm', '--quiet', ...extra];
const trainArgs = (out: string, extra: string[] = []) => ['train-predictors', '--activations', ACTS, '--out', out, '--set', 'mlp.rank=8', '--set', 'heads.rank=4',
  '--set', 'optim.epochs=1', '--backend', 'wasm', '--quiet', ...extra];
/** the spawned CLI (dist/), with a time limit: a hang is status null */
function spawnCli(args: string[], opts: { input?: string; timeout?: number } = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: opts.timeout ?? 30_000, input: opts.input, env: { ...process.env, DEJAVU_CACHE_DIR: path.join(TMP, 'cache') } });
  return { code: r.status, err: r.stderr };
}
function noStack(r: { err: string }) { expect(r.err).not.toContain('    at '); }
const manifest = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
/** a copy of the fixture checkpoint */
function modelCopy(name: string, edit?: (c: Record<string, unknown>) => void): string {
  const d = path.join(TMP, name);
  fs.cpSync(MODEL, d, { recursive: true });
  if (edit) { const f = path.join(d, 'config.json'); const c = JSON.parse(fs.readFileSync(f, 'utf8')); edit(c); fs.writeFileSync(f, JSON.stringify(c)); }
  return d;
}

beforeAll(async () => {
  fs.writeFileSync(DATA, sampleText(60));
  const c = await cli(...collectArgs(ACTS));
  expect(c.code, c.err).toBe(0);
}, 120_000);

describe('#20: data files', () => {
  it('#20 item 9: a JSONL of whitespace-only documents is refused like a whitespace-only .txt', async () => {
    const ws = path.join(TMP, 'ws.jsonl'), wt = path.join(TMP, 'ws.txt');
    fs.writeFileSync(ws, '{"text": "   \\n\\t  "}\n'.repeat(50));
    fs.writeFileSync(wt, '   \n\t  \n'.repeat(50));
    for (const f of [ws, wt]) {
      const r = await cli(...collectArgs(path.join(TMP, `o-${path.basename(f)}`), f));
      expect(r.code, r.err).toBe(2);
      expect(r.err).toMatch(new RegExp(`error: .*${path.basename(f).replace('.', '\\.')} holds no documents\nhint: the data file is empty or holds only whitespace`));
      expect(fs.existsSync(path.join(TMP, `o-${path.basename(f)}`))).toBe(false);
    }
    // whitespace-only documents among real ones are dropped, the same rule for both kinds
    const mixed = path.join(TMP, 'ws-mixed.jsonl');
    fs.writeFileSync(mixed, '{"text": "  "}\n{"text": "the whale"}\n{"text": "\\t"}\n');
    const docs: Doc[] = [];
    for await (const d of readDocuments(mixed)) docs.push(d);
    expect(docs).toEqual([{ text: 'the whale' }]);
  });

  it('#20 item 12: a sparse 600 MiB .txt with --max-tokens is streamed (exit 0, small heap); streamed pieces are exactly the whole text\'s', async () => {
    const big = path.join(TMP, 'big.txt');
    const fd = fs.openSync(big, 'w');
    fs.writeSync(fd, 'Hello world. '.repeat(40));
    fs.ftruncateSync(fd, 600 * 2 ** 20); // a hole: no disk used
    fs.closeSync(fd);
    const out = path.join(TMP, 'big-acts');
    // a 192 MiB heap: the old whole-file read needed a 600 MiB string (and failed: "Cannot create a string longer than ...")
    const r = spawnSync(process.execPath, ['--max-old-space-size=192', BIN, ...collectArgs(out, big, ['--max-tokens', '64'])], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(manifest(out).tokens).toBe(64);
    // a JSONL line longer than a string can be is refused by number (was: RangeError in readline, exit 1)
    const bigLine = path.join(TMP, 'big-line.jsonl');
    fs.writeFileSync(bigLine, '{"text": "a"}\n{"text": "');
    fs.truncateSync(bigLine, 300 * 2 ** 20);
    const l = await cli(...collectArgs(path.join(TMP, 'big-line-acts'), bigLine));
    expect(l.code, l.err).toBe(2);
    expect(l.err).toContain(`error: ${bigLine}:2: a line of over 256 Mi characters`);
    // the stream's pieces (1 MiB reads, multi-byte characters across the read boundaries) == textPieces of the whole text
    const unit = 'naïve café 東京 go 🐋 whale  ship\tsea\n', text = unit.repeat(Math.ceil(1.6 * 2 ** 20 / unit.length));
    const f = path.join(TMP, 'stream.txt');
    fs.writeFileSync(f, text);
    const got: string[] = [], more: boolean[] = [];
    for await (const d of readDocuments(f)) { got.push((d as { text: string }).text); more.push((d as { more?: boolean }).more === true); }
    expect(got.length).toBeGreaterThan(10);
    expect(got).toEqual([...textPieces(text)]);
    expect(more).toEqual(got.map((_, i) => i < got.length - 1)); // one document: every piece but the last goes on
    // packed: the same sequences as the text in memory, one BOS
    const cfg = normalizeConfig(JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8')), MODEL);
    const tokenizer = loadTokenizer(MODEL);
    const pack = async (docs: AsyncIterable<Doc>) => { const o: number[][] = []; for await (const q of packSequences(docs, { seqLen: 64, cfg, tokenizer, maxTokens: 64 * 400, source: 't' })) o.push(q); return o; };
    async function* one(): AsyncGenerator<Doc> { yield { text }; }
    const streamed = await pack(readDocuments(f));
    expect(streamed.length).toBe(400);
    expect(streamed).toEqual(await pack(one()));
    expect(streamed.flat().filter((x) => x === cfg.bosTokenId).length).toBe(1);
  }, 90_000);

  it('#20 item 16: --data /dev/zero and --data a FIFO exit 2 at once (were: hang for ever)', () => {
    const fifo = path.join(TMP, 'f.jsonl');
    spawnSync('mkfifo', [fifo]);
    expect(fs.statSync(fifo).isFIFO()).toBe(true);
    for (const [data, kind] of [['/dev/zero', 'a character device'], [fifo, 'a pipe']] as const) {
      const t = performance.now();
      const r = spawnCli(collectArgs(path.join(TMP, `o-special-${path.basename(data)}`), data), { timeout: 20_000 });
      expect(r.code, `${data}: ${r.err}`).toBe(2);
      expect(r.err).toContain(`error: data file ${data} is not a regular file (${kind})`);
      expect(r.err).toMatch(/hint: dejavu reads the data file several times \(hash, checks, tokens\): save it to a file first/);
      expect(performance.now() - t).toBeLessThan(15_000);
      noStack(r);
    }
  });

  it('#20 item 19: invalid UTF-8 names the offending byte (the Latin-1 0xe9 at offset 1), not the byte after it', async () => {
    expect(firstInvalidUtf8(Buffer.from([0x47, 0xe9, 0x6e, 0x0a]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from([0x61, 0xe0, 0x80, 0x80]))).toBe(1); // overlong: the lead byte
    expect(firstInvalidUtf8(Buffer.from([0x61, 0xff]))).toBe(1);
    expect(firstInvalidUtf8(Buffer.from('naïve 東京', 'utf8'))).toBe(-1);
    for (const name of ['l1.txt', 'l1.jsonl']) {
      const f = path.join(TMP, name);
      fs.writeFileSync(f, name.endsWith('.txt') ? Buffer.from([0x47, 0xe9, 0x6e, 0x0a]) : Buffer.concat([Buffer.from('{"text": "G'), Buffer.from([0xe9]), Buffer.from('n"}\n')]));
      const r = await cli(...collectArgs(path.join(TMP, `o-${name}`), f));
      expect(r.code).toBe(2);
      expect(r.err).toContain(`is not valid UTF-8: invalid byte 0xe9 at byte offset ${name.endsWith('.txt') ? 1 : 11}`);
    }
  });

  it('#20 item 20: a JSONL mixing "ids" and "text" documents is refused naming the line, with a hint', async () => {
    for (const [name, body, line, k, first] of [['ids-text.jsonl', '{"ids": [5, 6, 7]}\n\n{"text": "the whale"}\n', 3, 'text', 'ids'], ['text-ids.jsonl', '{"text": "the whale"}\n{"ids": [5, 6, 7]}\n', 2, 'ids', 'text']] as const) {
      const f = path.join(TMP, name);
      fs.writeFileSync(f, body);
      const r = await cli(...collectArgs(path.join(TMP, `o-${name}`), f));
      expect(r.code, r.err).toBe(2);
      expect(r.err).toContain(`error: ${f}:${line}: this document has "${k}", but the file's first document has "${first}"`);
      expect(r.err).toMatch(/hint: a data file holds either text .* or pre-tokenized ids .*, not both/);
    }
  });

  it('#20 item 26: .JSONL, .ndjson, .NDJSON, .Jsonl are read as JSONL; a .txt holding JSON lines is refused', async () => {
    const ref = manifest(ACTS);
    for (const name of ['corpus.JSONL', 'corpus.ndjson', 'corpus.NDJSON', 'corpus.Jsonl']) {
      const f = path.join(TMP, name), out = path.join(TMP, `o-${name}`);
      fs.copyFileSync(DATA, f);
      const r = await cli(...collectArgs(out, f));
      expect(r.code, `${name}: ${r.err}`).toBe(0);
      expect(manifest(out).tokens).toBe(ref.tokens);
      for (const s of fs.readdirSync(layerDir(ACTS, 0))) expect(fs.readFileSync(path.join(layerDir(out, 0), s)).equals(fs.readFileSync(path.join(layerDir(ACTS, 0), s))), `${name} ${s}`).toBe(true);
    }
    const txt = path.join(TMP, 'corpus.txt');
    fs.copyFileSync(DATA, txt);
    const r = await cli(...collectArgs(path.join(TMP, 'o-corpus.txt'), txt));
    expect(r.code).toBe(2);
    expect(r.err).toContain(`error: data file ${txt} looks like JSON lines (its first line is {"text": ...}) but its name does not end in .jsonl, .ndjson or .json`);
    expect(r.err).toMatch(/hint: rename it to end in \.jsonl/);
    // plain prose that merely starts with a brace is text
    const prose = path.join(TMP, 'brace.txt');
    fs.writeFileSync(prose, '{not json} ' + WORDS.join(' ').repeat(20));
    expect((await cli(...collectArgs(path.join(TMP, 'o-brace'), prose, ['--max-tokens', '16']))).code).toBe(0);
  });

  it('#20 item 27: --data /dev/stdin from a pipe and a process substitution exit 2 with the regular-file message (were: "holds no documents")', () => {
    const sh = (pipe: string, data: string) => spawnSync('bash', ['-c', `${pipe}'${process.execPath}' '${BIN}' ${collectArgs(path.join(TMP, 'o-pipe'), 'DATA').map((a) => (a === 'DATA' ? data : `'${a}'`)).join(' ')}`],
      { encoding: 'utf8', timeout: 30_000 });
    for (const [pipe, data, shown] of [[`cat '${DATA}' | `, '/dev/stdin', /\/dev\/stdin/], ['', `<(cat '${DATA}')`, /\/dev\/fd\/\d+/]] as const) {
      const r = sh(pipe, data);
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`error: data file ${shown.source} is not a regular file \\(a pipe\\)`));
      expect(r.stderr).toMatch(/save it to a file first/);
      expect(r.stderr).not.toMatch(/holds no documents/);
      expect(fs.existsSync(path.join(TMP, 'o-pipe'))).toBe(false);
    }
  });
});

describe('#20: config, tokenizer and checkpoint files', () => {
  it('#20 item 14: --config /dev/zero exits 2 at once (was: std::bad_alloc after 53 s); a config over 1 MiB is refused', () => {
    const t = performance.now();
    const r = spawnCli(collectArgs(path.join(TMP, 'o-cz'), DATA, ['--config', '/dev/zero']), { timeout: 20_000 });
    expect(r.code, r.err).toBe(2);
    expect(r.err).toContain('error: config /dev/zero is not a regular file (a character device)');
    expect(performance.now() - t).toBeLessThan(15_000);
    const big = path.join(TMP, 'big.yaml');
    fs.writeFileSync(big, '# padding\n'.repeat(120_000) + 'seqLen: 16\n');
    expect(() => readYamlFile(big)).toThrow(/config .*big\.yaml is 1\.14 MiB, over the limit of 1 MiB/);
    expect(() => readYamlFile(TMP)).toThrow(/config .* is a directory, not a file/);
  });

  it('#20 item 13: num_hidden_layers: 1000000 in config.json is refused at once, naming the key, the value and the tensors', async () => {
    const dir = modelCopy('ck-layers', (c) => { c.num_hidden_layers = 1_000_000; });
    expect(() => openCheckpoint(dir)).toThrow(/config\.json: num_hidden_layers is 1000000, but the checkpoint's tensors hold 2 layers \(model\.decoder\.layers\.0 to model\.decoder\.layers\.1\)/);
    const t = performance.now();
    const r = await cli(...collectArgs(path.join(TMP, 'o-layers'), DATA, ['--model', dir]));
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(/num_hidden_layers is 1000000, but the checkpoint's tensors hold 2 layers/);
    expect(performance.now() - t).toBeLessThan(10_000);
    expect(() => openCheckpoint(modelCopy('ck-layers-3', (c) => { c.num_hidden_layers = 3; }))).toThrow(/num_hidden_layers is 3/);
    expect(openCheckpoint(MODEL).rawConfig.num_hidden_layers).toBe(2); // the real count passes
  });

  it('#20 item 24: a folder named tokenizer.json is named as such; --model a file says it is a file, not that it does not exist', async () => {
    const dir = modelCopy('ck-tokdir');
    fs.rmSync(path.join(dir, 'tokenizer.json'));
    fs.mkdirSync(path.join(dir, 'tokenizer.json'));
    const r = await cli(...collectArgs(path.join(TMP, 'o-tokdir'), DATA, ['--model', dir]));
    expect(r.code, r.err).toBe(2);
    expect(r.err).toContain(`error: tokenizer ${path.join(dir, 'tokenizer.json')} is a directory, not a file`);
    const cfg = path.join(MODEL, 'config.json');
    const m = await cli(...collectArgs(path.join(TMP, 'o-modelfile'), DATA, ['--model', cfg]));
    expect(m.code).toBe(2);
    expect(m.err).toContain(`error: model folder ${cfg} is a file`);
    expect(m.err).toContain(`hint: pass --model with the checkpoint folder (the one holding config.json: ${MODEL}), not a file in it`);
    expect(m.err).not.toMatch(/does not exist/);
  });

  it('#20 item 25: --set __proto__.overwrite=true (and constructor/prototype) is refused and pollutes nothing', async () => {
    for (const key of ['__proto__.overwrite', 'constructor.prototype.overwrite', 'train.prototype']) {
      const r = await cli(...collectArgs(path.join(TMP, 'o-proto'), DATA, ['--set', `${key}=true`]));
      expect(r.code, key).toBe(2);
      expect(r.err).toMatch(new RegExp(`error: --set ${key.replace(/\./g, '\\.')}: "(__proto__|constructor|prototype)" is not a config key`));
      expect(({} as Record<string, unknown>).overwrite).toBeUndefined();
      expect(fs.existsSync(path.join(TMP, 'o-proto'))).toBe(false);
    }
    const o: Record<string, unknown> = {};
    expect(() => setPath(o, '__proto__.polluted', 1)).toThrow(/"__proto__" is not a config key/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('#20: workers and process limits', () => {
  it('#20 item 15: train --workers above the cores starts one worker per core, with a one-line note', async () => {
    const cores = os.availableParallelism(), out = path.join(TMP, 'pred-w');
    const r = await cli(...trainArgs(out, ['--workers', String(cores + 2)]));
    expect(r.code, r.err).toBe(0);
    expect(r.err).toContain(`note: --workers ${cores + 2} is more than the ${cores} core(s) here: using ${cores}`);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'predictors.json'), 'utf8')).training.workers).toBe(cores);
  });

  it('too few calibration sequences for a validation split: train exits 2 before any work, naming the count and the fix (was: TypeError in ruleText, exit 1)', async () => {
    const acts = path.join(TMP, 'acts-few'), out = path.join(TMP, 'pred-few');
    const c = await cli(...collectArgs(acts, DATA, ['--max-tokens', '64']));
    expect(c.code, c.err).toBe(0);
    const r = await cli('train-predictors', '--activations', acts, '--out', out, '--workers', '1', '--set', 'mlp.predictors=[closed-form]', '--set', 'heads.enabled=false', '--quiet');
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(/holds 4 sequence\(s\), but with validationFraction 0\.1 only every 10th sequence is held out for validation/);
    expect(r.err).toMatch(/hint: collect at least 10 sequences \(--max-tokens 160 at --seq-len 16\)/);
    noStack(r);
    expect(fs.existsSync(out), 'no output folder').toBe(false);
  });

  it('#20 item 21: a weight decay that diverges training names optim.weightDecay in the hint, not optim.lr', async () => {
    const r = await cli(...trainArgs(path.join(TMP, 'pred-wd'), ['--workers', '1', '--set', 'optim.epochs=3', '--set', 'optim.weightDecay=1e8']));
    expect(r.code, r.err).toBe(2);
    expect(r.err).toMatch(/error: training diverged/);
    expect(r.err).toMatch(/hint: lower optim\.weightDecay \(now 100000000\): each step scales the weights by 1 - optim\.lr x optim\.weightDecay = -100000; e\.g\. --set optim\.weightDecay=0\.01/);
    expect(r.err).not.toMatch(/hint: lower optim\.lr/);
  });

  it('#20 item 18: with ulimit -n 128 the CLI exits 2 with the EMFILE message and hint (was: a stack from Node\'s module loader)', () => {
    const args = collectArgs(path.join(TMP, 'o-emfile')).map((a) => `'${a}'`).join(' ');
    const r = spawnSync('bash', ['-c', `ulimit -n 128; '${process.execPath}' '${BIN}' ${args}`], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/too many open files .*\(EMFILE\)\nhint: raise the open-file limit \(ulimit -n\) and re-run/);
    noStack({ err: r.stderr });
  });
});
