/**
 * Progress on stderr: a cli-progress bar when stderr is a TTY, plain periodic lines otherwise, nothing when quiet.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void;
  stop(): void;
}
export type ProgressFactory = (label: string, total: number, unit?: string) => Progress;

export interface StageDeps {
  log: (msg: string) => void;
  progress: ProgressFactory;
}

export function makeProgressFactory(stream: NodeJS.WritableStream & { isTTY?: boolean }, opts: { quiet?: boolean; intervalMs?: number } = {}): ProgressFactory {
  if (opts.quiet) return () => ({ update: () => undefined, stop: () => undefined });
  if (stream.isTTY) {
    return (label, total, unit = 'it') => {
      const bar = new cliProgress.SingleBar({
        stream: stream as NodeJS.WritableStream,
        format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {rate} ${unit}/s | ETA {eta_formatted} {extra}`,
        hideCursor: false,
        etaBuffer: 50,
      }, cliProgress.Presets.shades_classic);
      const t0 = Date.now();
      bar.start(total, 0, { rate: '0', extra: '' });
      return {
        update(value, payload) {
          const rate = (value / Math.max(1e-3, (Date.now() - t0) / 1000)).toFixed(0);
          const extra = payload ? Object.entries(payload).map(([k, v]) => `${k}=${v}`).join(' ') : '';
          bar.update(value, { rate, extra });
        },
        stop: () => bar.stop(),
      };
    };
  }
  const interval = opts.intervalMs ?? 10_000;
  return (label, total, unit = 'it') => {
    const t0 = Date.now();
    let last = 0;
    let lastValue = 0;
    const line = (value: number, payload?: Record<string, string | number>) => {
      const s = (Date.now() - t0) / 1000;
      const rate = value / Math.max(1e-3, s);
      const eta = rate > 0 ? (total - value) / rate : 0;
      const extra = payload ? ' ' + Object.entries(payload).map(([k, v]) => `${k}=${v}`).join(' ') : '';
      const of = total > 0 ? `/${total} ${unit} (${((100 * value) / total).toFixed(0)}%)` : ` ${unit}`;
      stream.write(`${label}: ${value}${of} ${rate.toFixed(0)} ${unit}/s${total > 0 ? ` ETA ${eta.toFixed(0)}s` : ''}${extra}\n`);
    };
    return {
      update(value, payload) {
        lastValue = value;
        if (Date.now() - last >= interval) { last = Date.now(); line(value, payload); }
      },
      stop() { line(lastValue); },
    };
  };
}
