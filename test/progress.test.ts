/**
 * Issue #25 "progress": every phase shows its total, a rate and an ETA only after warm-up (no "4/360 seqs (1%)
 * 4000 seqs/s ETA 0s"), rates readable at any speed (no "0 sites/s"), and a final line with the phase's time.
 */
import { describe, expect, it } from 'vitest';
import { doneText, makeProgressFactory, progressText, rateText, WARM_MS, withApproximateTotal, type StageDeps } from '../src/util/progress.js';

describe('progress text', () => {
  it('no rate or ETA before warm-up: under WARM_MS, or under 3% of the total', () => {
    expect(progressText(4, 360, 400, 'seqs')).toBe('4/360 seqs (1%), ETA after warm-up');
    expect(progressText(4, 360, 60_000, 'seqs')).toBe('4/360 seqs (1%), ETA after warm-up'); // 1%: one batch's rate is noise
    expect(progressText(300, 360, WARM_MS - 1, 'seqs')).toBe('300/360 seqs (83%), ETA after warm-up');
  });

  it('after warm-up: the rate over the whole phase and the ETA from it', () => {
    expect(progressText(36, 360, 6000, 'seqs')).toBe('36/360 seqs (10%), 6.0 seqs/s, ETA 54 s');
    expect(progressText(22528, 93440, 16_000, 'tok', true)).toBe('22,528/~93,440 tok (24%), 1,408 tok/s, ETA 50 s');
    expect(progressText(1, 6, 20_000, 'sites')).toBe('1/6 sites (16%), 20.0 s/site, ETA 1.7 min');
    expect(progressText(6, 6, 20_000, 'sites')).toBe('6/6 sites (100%), 3.3 s/site');
    expect(progressText(500, 0, 10_000, 'tok')).toBe('500 tok, 50.0 tok/s'); // no total: no ETA
  });

  it('an approximate total the phase runs past shows 100%, never more', () => {
    expect(progressText(95_000, 93_440, 40_000, 'tok', true)).toBe('95,000/~93,440 tok (100%), 2,375 tok/s');
  });

  it('rates and the final line', () => {
    expect(rateText(0, 10, 'sites')).toMatch(/s\/site$/);
    expect(doneText('collect', 93440, 43_600, 'tok')).toBe('collect: done, 93,440 tok in 44 s (2,143 tok/s)');
    expect(doneText('plan: options', 6, 9_000, 'layers')).toBe('plan: options: done, 6 layers in 9.0 s (1.5 s/layer)');
  });
});

describe('the plain-line progress (stderr not a TTY)', () => {
  it('a line per interval, the first after warm-up has the ETA, and one final line with the time', () => {
    let t = 0;
    const out: string[] = [];
    const stream = { write: (s: string) => { out.push(s); return true; } } as unknown as NodeJS.WritableStream;
    const bar = makeProgressFactory(stream, { intervalMs: 2000, now: () => t })('perplexity', 360, 'seqs');
    t = 1000; bar.update(4);   // within the interval: nothing
    t = 2000; bar.update(8);   // a line, before warm-up
    t = 6000; bar.update(36);  // warm
    t = 9000; bar.update(360);
    bar.stop(); bar.stop();
    expect(out).toEqual([
      'perplexity: 8/360 seqs (2%), ETA after warm-up\n',
      'perplexity: 36/360 seqs (10%), 6.0 seqs/s, ETA 54 s\n',
      'perplexity: 360/360 seqs (100%), 40.0 seqs/s\n',
      'perplexity: done, 360 seqs in 9.0 s (40.0 seqs/s)\n',
    ]);
  });

  it('quiet: nothing', () => {
    const out: string[] = [];
    const bar = makeProgressFactory({ write: (s: string) => { out.push(s); return true; } } as unknown as NodeJS.WritableStream, { quiet: true })('x', 3);
    bar.update(3); bar.stop();
    expect(out).toEqual([]);
  });
});

describe('withApproximateTotal (collect streams its text: the estimate stands in for the total)', () => {
  it('a bar without a total gets the estimate, marked approximate; a bar with one keeps it', () => {
    const calls: unknown[][] = [];
    const deps: StageDeps = { log: () => undefined, progress: (...a) => { calls.push(a); return { update: () => undefined, stop: () => undefined }; } };
    let asked = 0;
    const d = withApproximateTotal(deps, () => { asked++; return 93_000; });
    d.progress('collect', 0, 'tok');
    d.progress('collect', 4096, 'tok');
    expect(calls).toEqual([['collect', 93_000, 'tok', { approximate: true }], ['collect', 4096, 'tok', undefined]]);
    expect(asked).toBe(1); // estimated only when needed
  });
});
