// npm run docs: writes docs/configuration.md from the zod schemas (src/config/docs.ts, built into dist/).
import fs from 'node:fs';
import path from 'node:path';
import { renderConfigDocs } from '../dist/config/docs.js';

const target = path.join(import.meta.dirname, '..', 'docs', 'configuration.md');
const tmp = `${target}.${process.pid}.tmp`;
fs.writeFileSync(tmp, renderConfigDocs());
fs.renameSync(tmp, target);
console.log(`wrote ${path.relative(process.cwd(), target)}`);
