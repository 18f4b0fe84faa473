import * as fs from 'node:fs';
import type { StageResult } from './types.js';
import type { ExportConfig } from '../config/schemas.js';
import { exportBundle, verifyBundle } from '../bundle/bundle.js';
import type { BundleManifest } from '../bundle/schema.js';
import { readEvalReport } from '../eval/report.js';
import { readPlanFile } from '../runtime/plan.js';
import { predictorsContentHash } from '../predictors/content-hash.js';
import { UserError } from '../util/errors.js';
import type { StageDeps } from '../util/progress.js';
import { recordedCurrent, writeRecord, type Currency, type StageRecord } from './current.js';

/** what a bundle is made from: the predictors' content, the report's and the plan's seals, the config (less overwrite) */
function exportRecord(cfg: ExportConfig): StageRecord {
  const { overwrite: _o, ...c } = cfg;
  return { name: 'export-bundle', dir: cfg.out, file: 'manifest.json', inputs: () => ({
    p: predictorsContentHash(cfg.predictors), r: cfg.report ? readEvalReport(cfg.report).sealSha256 : null, pl: cfg.plan ? readPlanFile(cfg.plan).sealSha256 : null, c,
  }) };
}
const readBundle = (cfg: ExportConfig) => () => {
  const v = verifyBundle(cfg.out, cfg.model);
  if (v.problems.length || !v.manifest) throw new UserError(`the bundle in ${cfg.out} does not verify (${v.problems[0]})`);
  return { value: v.manifest, seal: v.manifest.manifestSha256 };
};

/** export-bundle's rule: its bundle is current when made from the same inputs (exportRecord) and it verifies as the one it wrote */
export function exportCurrent(cfg: ExportConfig): Currency<BundleManifest> {
  return recordedCurrent(exportRecord(cfg), readBundle(cfg));
}

export async function runExport(cfg: ExportConfig, deps: StageDeps): Promise<StageResult> {
  const rec = exportRecord(cfg);
  const cur = fs.existsSync(cfg.out) && !cfg.overwrite ? recordedCurrent(rec, readBundle(cfg)) : null; // --overwrite: made again even when current
  if (cur?.current) { deps.log(`export-bundle: ${cfg.out} is complete, current and verifies; nothing to do`); return { text: bundleTable(cfg.out, cur.value), json: cur.value }; }
  const m = exportBundle({ ...cfg, config: cfg as unknown as Record<string, unknown> });
  writeRecord(rec, m.manifestSha256);
  deps.log(`export-bundle: wrote ${cfg.out}`);
  return { text: bundleTable(cfg.out, m), json: m };
}

function bundleTable(out: string, m: BundleManifest): string {
  const lines = [`bundle: ${out} (format ${m.formatVersion}, ${m.layers.length} layers, ${m.model.family})`, '', '| file | bytes | sha256 |', '|---|---:|---|'];
  for (const [f, v] of Object.entries(m.files)) lines.push(`| ${f} | ${v.bytes} | ${v.sha256.slice(0, 16)}… |`);
  return lines.join('\n');
}
export async function runVerify(cfg: { bundle: string; model?: string | undefined }, _deps: StageDeps): Promise<StageResult> {
  if (!cfg.bundle) return { text: 'error: --bundle is required', json: { ok: false, problems: ['--bundle is required'] }, code: 2 };
  const { problems, manifest } = verifyBundle(cfg.bundle, cfg.model);
  if (problems.length) return { text: `bundle ${cfg.bundle} FAILED verification:\n  - ${problems.join('\n  - ')}`, json: { ok: false, problems }, code: 2 };
  return { text: `bundle ${cfg.bundle} OK: ${Object.keys(manifest!.files).length} files verified${cfg.model ? `, matches ${cfg.model}` : ''}`, json: { ok: true, problems: [] } };
}
