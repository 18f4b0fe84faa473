/** Where the stages' worker thread script is: next to this module in dist/, or dist/ when running from src/ (tests). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export function stageWorkerScript(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'worker.js'), path.join(here, '..', '..', 'dist', 'stages', 'worker.js')];
  const f = candidates.find((c) => fs.existsSync(c));
  if (!f) throw new Error(`worker script not found (looked for ${candidates.join(', ')}); run npm run build`);
  return f;
}
