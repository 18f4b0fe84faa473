// Builds the native row kernels (src/model/kernels/native/rows.c) into build/native/rows.node, and collect's GPU
// readback copy (src/activations/native/readback.c) into build/native/readback.node, with the system's C
// compiler, against the Node-API headers of the `node-api-headers` package. Run by `npm install` / `npm ci` (the
// package's install script) and by the test setup when the source is newer than the build. Never fatal: without a
// compiler (or on a failure) it says why on stderr and exits 0, and the decode runtime uses its WebAssembly kernels.
// `--strict`: a failure exits 1 (CI, and `npm run build:native`).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

const repo = path.join(import.meta.dirname, '..');
const src = path.join(repo, 'src/model/kernels/native/rows.c');
const out = path.join(repo, 'build/native/rows.node');
const strict = process.argv.includes('--strict');

function give(why) {
  console.error(`note: the native decode kernels were not built (${why}); the decode runtime uses its WebAssembly kernels and collect copies its GPU reads in JavaScript`);
  process.exit(strict ? 1 : 0);
}

// the addons: the decode runtime's row kernels, and collect's GPU readback copy (src/activations/native/readback.c)
const addons = [[src, out], [path.join(repo, 'src/activations/native/readback.c'), path.join(repo, 'build/native/readback.node')]];
if (process.platform === 'win32') give('Windows builds are not supported yet');
let include;
try { include = createRequire(import.meta.url).resolve('node-api-headers/include/node_api.h'); } catch { give('the node-api-headers package is not installed'); }
const cc = process.env.CC || 'cc';
for (const [from, to] of addons) {
  if (!fs.existsSync(from)) give(`${path.relative(repo, from)} is missing`);
  if (!process.argv.includes('--force') && fs.existsSync(to) && fs.statSync(to).mtimeMs >= fs.statSync(from).mtimeMs) continue;
  const tmp = `${to}.${process.pid}.tmp`;
  fs.mkdirSync(path.dirname(to), { recursive: true });
  const args = ['-O3', '-std=gnu11', '-fPIC', '-shared', '-pthread', '-fvisibility=hidden', '-I', path.dirname(include), from, '-o', tmp];
  if (process.platform === 'darwin') args.push('-undefined', 'dynamic_lookup');
  const r = spawnSync(cc, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    fs.rmSync(tmp, { force: true });
    give(r.error ? `${cc}: ${r.error.code === 'ENOENT' ? 'no C compiler (set CC, or install gcc or clang)' : r.error.message}` : `${cc} exited ${r.status}:\n${r.stderr}`);
  }
  fs.renameSync(tmp, to); // a temp sibling renamed: a half-written addon is never loaded
}
