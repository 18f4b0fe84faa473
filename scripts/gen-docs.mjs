// npm run docs: writes docs/configuration.md from the zod schemas (src/config/docs.ts), docs/results.md from the
// benchmarks' docs/results/*.json (src/bench/results-doc.ts) and the README's results box; each built into dist/.
// test/config-docs.test.ts and test/results-docs.test.ts fail when a committed file differs from what this writes.
import fs from 'node:fs';
import path from 'node:path';
import { renderConfigDocs } from '../dist/config/docs.js';
import { readResults, renderResults, withResultsBox } from '../dist/bench/results-doc.js';

const root = path.join(import.meta.dirname, '..');
const write = (rel, text) => {
  const target = path.join(root, rel), tmp = `${target}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, target);
  console.log(`wrote ${rel}`);
};
const results = readResults(path.join(root, 'docs', 'results'));
write(path.join('docs', 'configuration.md'), renderConfigDocs());
write(path.join('docs', 'results.md'), renderResults(results));
write('README.md', withResultsBox(fs.readFileSync(path.join(root, 'README.md'), 'utf8'), results));
