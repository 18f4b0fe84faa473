/**
 * Progress on stderr: a cli-progress bar when stderr is a TTY, plain periodic lines otherwise, nothing when quiet.
 * Every phase shows its total (`~` when it is an estimate); a rate and an ETA only after warm-up (WARM_MS and
 * WARM_SHARE of the total in: the first batches run slower while the JIT and the workers start, and a rate over
 * one item is noise); and a final line with the phase's time.
 */
import cliProgress from 'cli-progress';

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void;
  stop(): void;
}
/** `approximate`: the total is an estimate (e.g. tokens from the file size): shown as ~N, and the bar may end short of or past it */
export type ProgressFactory = (label: string, total: number, unit?: string, opts?: { approximate?: boolean }) => Progress;

export interface StageDeps {
  log: (msg: string) => void;
  progress: ProgressFactory;
}

/**
 * deps whose progress bars without a total (collect streams its text) get `total()` instead, shown as ~N: e.g. the
 * estimate's token count from the file size and the measured bytes per token
 */
export function withApproximateTotal(deps: StageDeps, total: () => number): StageDeps {
  return { ...deps, progress: (l, n, unit, o) => (n > 0 ? deps.progress(l, n, unit, o) : deps.progress(l, total(), unit, { approximate: true })) };
}

export const WARM_MS = 5000;
export const WARM_SHARE = 0.03;

/** "12.3 s", "4.2 min", "1.5 h" */
export function duration(s: number): string {
  return s >= 5400 ? `${(s / 3600).toFixed(1)} h` : s >= 90 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(s < 10 ? 1 : 0)} s`;
}

/** a rate readable at any speed: "2,154 tok/s", "3.4 sites/s", "12.0 s/site" */
export function rateText(value: number, seconds: number, unit: string): string {
  const r = value / Math.max(1e-3, seconds);
  if (r >= 100) return `${Math.round(r).toLocaleString('en-US')} ${unit}/s`;
  if (r >= 1) return `${r.toFixed(1)} ${unit}/s`;
  return `${(seconds / Math.max(value, 1e-9)).toFixed(1)} s/${unit.replace(/s$/, '')}`;
}

/**
 * The progress text after `value` of `total` in `ms`: "value/total unit (p%)", then, once warm, the rate and the ETA
 * (until then "ETA after warm-up"). Pure, so the rule is tested without a clock.
 */
export function progressText(value: number, total: number, ms: number, unit: string, approximate = false): string {
  const of = total > 0 ? `/${approximate ? '~' : ''}${total.toLocaleString('en-US')} ${unit} (${Math.min(100, Math.floor((100 * value) / total))}%)` : ` ${unit}`;
  const warm = ms >= WARM_MS && value > 0 && (total <= 0 || value >= WARM_SHARE * total);
  if (!warm) return `${value.toLocaleString('en-US')}${of}${total > 0 && value < total ? ', ETA after warm-up' : ''}`;
  const eta = total > value ? `, ETA ${duration(((total - value) * ms) / value / 1000)}` : '';
  return `${value.toLocaleString('en-US')}${of}, ${rateText(value, ms / 1000, unit)}${eta}`;
}

/** the final line: "label: done, 93,440 tok in 43.6 s (2,143 tok/s)" */
export function doneText(label: string, value: number, ms: number, unit: string): string {
  return `${label}: done, ${value.toLocaleString('en-US')} ${unit} in ${duration(ms / 1000)}${value > 0 ? ` (${rateText(value, ms / 1000, unit)})` : ''}`;
}

const extraText = (payload?: Record<string, string | number>) => (payload ? Object.entries(payload).map(([k, v]) => ` ${k}=${v}`).join('') : '');

export function makeProgressFactory(stream: NodeJS.WritableStream & { isTTY?: boolean }, opts: { quiet?: boolean; intervalMs?: number; now?: () => number } = {}): ProgressFactory {
  if (opts.quiet) return () => ({ update: () => undefined, stop: () => undefined });
  const now = opts.now ?? Date.now;
  if (stream.isTTY) {
    return (label, total, unit = 'it', o = {}) => {
      const bar = new cliProgress.SingleBar({
        stream: stream as NodeJS.WritableStream, format: `${label} [{bar}] {text}{extra}`, hideCursor: false,
      }, cliProgress.Presets.shades_classic);
      const t0 = now();
      let lastValue = 0, stopped = false;
      bar.start(Math.max(total, 1), 0, { text: progressText(0, total, 0, unit, o.approximate), extra: '' });
      return {
        update(value, payload) {
          lastValue = value;
          bar.setTotal(Math.max(total, value, 1));
          bar.update(value, { text: progressText(value, total, now() - t0, unit, o.approximate), extra: extraText(payload) });
        },
        stop() { if (stopped) return; stopped = true; bar.stop(); stream.write(doneText(label, lastValue, now() - t0, unit) + '\n'); },
      };
    };
  }
  const interval = opts.intervalMs ?? 10_000;
  return (label, total, unit = 'it', o = {}) => {
    const t0 = now();
    let last = t0;
    let lastValue = 0, stopped = false;
    return {
      update(value, payload) {
        lastValue = value;
        if (now() - last >= interval) { last = now(); stream.write(`${label}: ${progressText(value, total, last - t0, unit, o.approximate)}${extraText(payload)}\n`); }
      },
      stop() { if (stopped) return; stopped = true; stream.write(doneText(label, lastValue, now() - t0, unit) + '\n'); },
    };
  };
}
