/**
 * docs/configuration.md, generated from the zod schemas (their .describe() texts, types, bounds and defaults) by
 * `npm run docs` (scripts/gen-docs.mjs); test/config-docs.test.ts fails when the committed file is stale or a key has
 * no description.
 */
import { z } from 'zod';
import { generateSchema, SCHEMAS } from './schemas.js';

type JsonSchema = {
  type?: string; description?: string; default?: unknown; const?: unknown; enum?: unknown[]; anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>; required?: string[]; items?: JsonSchema; minItems?: number;
  minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number;
};
export interface KeyRow { key: string; type: string; dflt: string; description: string | undefined }

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const code = (v: unknown) => '`' + JSON.stringify(v) + '`';

function typeOf(s: JsonSchema): string {
  if (s.anyOf) return s.anyOf.map(typeOf).join(' or ');
  if (s.const !== undefined) return code(s.const);
  if (s.enum) return s.enum.map(code).join(' \\| ');
  if (s.type === 'array') return `list of ${s.items ? typeOf(s.items) : 'values'}${s.minItems ? ` (at least ${s.minItems})` : ''}`;
  if (s.type === 'object') return 'section';
  if (s.type === 'integer' || s.type === 'number') {
    const b = [s.exclusiveMinimum !== undefined ? `> ${s.exclusiveMinimum}` : '', s.minimum !== undefined && s.minimum > -MAX_SAFE ? `>= ${s.minimum}` : '',
      s.exclusiveMaximum !== undefined ? `< ${s.exclusiveMaximum}` : '', s.maximum !== undefined && s.maximum < MAX_SAFE ? `<= ${s.maximum}` : ''].filter(Boolean);
    return `${s.type}${b.length ? ' ' + b.join(', ') : ''}`;
  }
  return s.type ?? 'any';
}

/** Every key of a command's schema, sections expanded with dotted keys (`stop`: keys not expanded). */
export function keyRows(schema: z.ZodType, stop: (key: string) => boolean = () => false): KeyRow[] {
  const rows: KeyRow[] = [];
  const walk = (s: JsonSchema, at: string) => {
    const req = new Set(s.required ?? []);
    for (const [k, p] of Object.entries(s.properties ?? {})) {
      const key = at ? `${at}.${k}` : k;
      const dflt = p.default !== undefined ? (typeof p.default === 'object' && p.default !== null && !Array.isArray(p.default) && !Object.keys(p.default).length ? '' : code(p.default)) : req.has(k) ? 'required' : '';
      rows.push({ key, type: typeOf(p), dflt, description: p.description });
      if (stop(key)) continue;
      if (p.properties) walk(p, key);
      for (const alt of p.anyOf ?? []) if (alt.properties) walk(alt, key);
    }
  };
  walk(z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as JsonSchema, '');
  return rows;
}

/** the pipeline's sections that are a stage command's keys */
const SECTIONS: Record<string, keyof typeof SCHEMAS> = { collect: 'collect-activations', train: 'train-predictors', evaluate: 'evaluate-recall', plan: 'plan', export: 'export-bundle' };

const table = (rows: KeyRow[]) => ['| key | type | default | what it does |', '| --- | --- | --- | --- |',
  ...rows.map((r) => `| \`${r.key}\` | ${r.type} | ${r.dflt} | ${(r.description ?? '').replace(/\|/g, '\\|')} |`)].join('\n');

export function renderConfigDocs(): string {
  const out = [
    '# Configuration',
    '',
    '<!-- generated from src/config/schemas.ts by `npm run docs`; do not edit by hand (test/config-docs.test.ts checks it) -->',
    '',
    'Every command resolves its settings the same way, each layer over the one before: the defaults below, then',
    'defaults fitted to the model (sequence lengths capped at its positions, the head rank at its width, the',
    'pipeline\'s workdir `runs/<model folder name>`), then the YAML file (`--config`), then the flags, then',
    '`--set key=value` (the value is read as YAML: numbers, booleans, `[lists]`). `--print-config` prints the result',
    'and stops. Unknown keys are refused by name.',
    '',
    '**One spelling.** A key\'s full name is its place in a pipeline config (`plan.maxPplIncrease`,',
    '`train.mlp.targetRecall`); a stage command also takes it without its section (`dejavu plan --set',
    'maxPplIncrease=0.02` = `--set plan.maxPplIncrease=0.02`). A stage command given a pipeline config (every file in',
    '`configs/`) takes that file\'s section (e.g. `plan:`), its `model`, `backend` and `data` (the calibration file for',
    'collect-activations, the held-out one for evaluate-recall and plan), and its inputs from the pipeline\'s workdir',
    '(predictors, activations, report, plan); the output folder is still named with `--out`.',
    '',
  ];
  const pipeShape = SCHEMAS.pipeline.shape as Record<string, z.ZodType>;
  const pipeRows: KeyRow[] = [], notes: string[] = [];
  for (const r of keyRows(SCHEMAS.pipeline, (k) => k in SECTIONS)) {
    pipeRows.push(r);
    const cmd = SECTIONS[r.key];
    if (!cmd) continue;
    const own = Object.keys(SCHEMAS[cmd].shape), sec = keyRows(pipeShape[r.key]!);
    const inSection = sec.filter((x) => !x.key.includes('.')).map((x) => x.key);
    // keys only the pipeline's section has (plan.enabled)
    for (const x of sec) if (!own.includes(x.key.split('.')[0]!)) pipeRows.push({ ...x, key: `${r.key}.${x.key}` });
    notes.push(`\`${r.key}.*\`: the keys of [${cmd}](#${cmd}), except ${own.filter((k) => !inSection.includes(k)).map((k) => `\`${k}\``).join(', ')} (the pipeline sets them).`);
  }
  out.push('## pipeline', '', table(pipeRows), '', ...notes.flatMap((n) => [n, '']));
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    if (name === 'pipeline') continue;
    if (name === 'estimate') { out.push('## estimate', '', 'The keys of [pipeline](#pipeline) (the costs of that pipeline), `data` optional (1M calibration tokens assumed without it).', ''); continue; }
    out.push(`## ${name}`, '', table(keyRows(schema)), '');
  }
  out.push('## generate', '', 'Flags only (no config file):', '', table(keyRows(generateSchema)), '');
  return out.join('\n');
}
