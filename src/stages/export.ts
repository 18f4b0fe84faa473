import type { StageResult } from './types.js';
import type { ExportConfig } from '../config/schemas.js';
import { exportBundle, verifyBundle } from '../bundle/bundle.js';
import type { StageDeps } from '../util/progress.js';

export async function runExport(cfg: ExportConfig, deps: StageDeps): Promise<StageResult> {
  const m = exportBundle({ ...cfg, config: cfg as unknown as Record<string, unknown> });
  deps.log(`export-bundle: wrote ${cfg.out}`);
  const lines = [`bundle: ${cfg.out} (format ${m.formatVersion}, ${m.layers.length} layers, ${m.model.family})`, '', '| file | bytes | sha256 |', '|---|---:|---|'];
  for (const [f, v] of Object.entries(m.files)) lines.push(`| ${f} | ${v.bytes} | ${v.sha256.slice(0, 16)}… |`);
  return { text: lines.join('\n'), json: m };
}

export async function runVerify(cfg: { bundle: string; model?: string | undefined }, _deps: StageDeps): Promise<StageResult> {
  if (!cfg.bundle) return { text: 'error: --bundle is required', json: { ok: false, problems: ['--bundle is required'] }, code: 2 };
  const { problems, manifest } = verifyBundle(cfg.bundle, cfg.model);
  if (problems.length) return { text: `bundle ${cfg.bundle} FAILED verification:\n  - ${problems.join('\n  - ')}`, json: { ok: false, problems }, code: 2 };
  return { text: `bundle ${cfg.bundle} OK: ${Object.keys(manifest!.files).length} files verified${cfg.model ? `, matches ${cfg.model}` : ''}`, json: { ok: true, problems: [] } };
}
