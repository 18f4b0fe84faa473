#!/usr/bin/env node
// dist/ is imported here, not statically: with a low open-file limit (ulimit -n 128) Node's module loader fails with
// EMFILE before any of dejavu runs, and that must be exit 2 with the fix, like EMFILE anywhere else.
try {
  const { main } = await import('../dist/cli/main.js');
  process.exitCode = await main(process.argv);
} catch (e) {
  if (e?.code !== 'EMFILE') throw e;
  process.stderr.write(`error: too many open files while loading dejavu's modules (EMFILE)\nhint: raise the open-file limit (ulimit -n) and re-run\n`);
  process.exitCode = 2;
}
