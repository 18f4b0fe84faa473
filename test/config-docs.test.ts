/** Issue #25: docs/configuration.md is generated from the zod schemas; every key is described, and the file is current. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { keyRows, renderConfigDocs } from '../src/config/docs.js';
import { generateSchema, SCHEMAS } from '../src/config/schemas.js';

describe('docs/configuration.md', () => {
  it('every key of every command has a description', () => {
    const missing = Object.entries({ ...SCHEMAS, generate: generateSchema }).flatMap(([name, s]) => keyRows(s).filter((r) => !r.description?.trim()).map((r) => `${name}: ${r.key}`));
    expect(missing).toEqual([]);
  });

  it('lists every key with its default', () => {
    const doc = renderConfigDocs();
    for (const r of keyRows(SCHEMAS.plan)) expect(doc).toContain(`| \`${r.key}\` | ${r.type} | ${r.dflt} |`);
    expect(doc).toContain('| `maxPplIncrease` | number >= 0, <= 1 | `0.01` |');
    expect(doc).toContain('| `plan.enabled` | boolean | `true` |');
  });

  it('the committed file is the one `npm run docs` writes from the current schemas', () => {
    const file = path.join(import.meta.dirname, '..', 'docs', 'configuration.md');
    expect(fs.readFileSync(file, 'utf8'), 'docs/configuration.md is stale: run `npm run docs` and commit it').toBe(renderConfigDocs());
  });
});
