/**
 * Backend selection at run time: `tensorflow` (tfjs-node-gpu or tfjs-node, when importable) else `wasm` else `cpu`.
 * tfjs-node(-gpu) is an optionalDependency: it needs a libtensorflow download at install time, which fails on
 * machines without that network access; npm then skips it and we fall back.
 */
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { UserError } from './util/errors.js';

/** The one backend list, in `auto`'s order of preference (config schema, --backend flag and selection use it). */
export const BACKEND_NAMES = ['tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
export type BackendPreference = 'auto' | BackendName;
export const BACKEND_PREFERENCES = ['auto', ...BACKEND_NAMES] as const satisfies readonly BackendPreference[];

export interface BackendProbe {
  /** try to make the tensorflow backend available; returns the package that provided it, or null */
  tensorflow(): Promise<string | null>;
  /** whether a backend of that name initializes */
  init(name: BackendName): Promise<boolean>;
}

export interface BackendChoice {
  name: BackendName;
  /** human-readable reason, printed by every command */
  reason: string;
}

const defaultProbe: BackendProbe = {
  async tensorflow() {
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        await import(pkg);
        if (tf.findBackend('tensorflow')) return pkg;
      } catch {
        // not installed or its native library is missing: try the next one
      }
    }
    return null;
  },
  async init(name) {
    try {
      return (await tf.setBackend(name)) && tf.getBackend() === name;
    } catch {
      return false;
    }
  },
};

/**
 * Pick and initialize a backend. `auto` tries tensorflow, wasm, cpu in that order; an explicit preference that
 * cannot initialize is a user error (exit 2) naming what is missing.
 */
export async function selectBackend(pref: BackendPreference = 'auto', probe: BackendProbe = defaultProbe): Promise<BackendChoice> {
  const tried: string[] = [];
  const order: readonly BackendName[] = pref === 'auto' ? BACKEND_NAMES : [pref];
  for (const name of order) {
    if (name === 'tensorflow') {
      const pkg = await probe.tensorflow();
      if (pkg && (await probe.init('tensorflow'))) return { name, reason: pref === 'auto' ? `auto: ${pkg} is installed` : `requested (${pkg})` };
      tried.push(pkg ? `tensorflow: ${pkg} is installed but failed to initialize` : 'tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is importable');
      continue;
    }
    if (await probe.init(name)) {
      const why = pref === 'auto' ? `auto: ${tried.map((t) => t.split(':')[0]).join(', ')} unavailable` : 'requested';
      return { name, reason: why };
    }
    tried.push(`${name}: failed to initialize`);
  }
  throw new UserError(`backend "${pref}" is not available (${tried.join('; ')})`, pref === 'tensorflow'
    ? 'install @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node (needs network access to the libtensorflow download), or use --backend wasm'
    : 'use --backend auto');
}

let current: BackendChoice | null = null;
/** Initialize once per process (idempotent for the same preference). */
export async function ensureBackend(pref: BackendPreference = 'auto'): Promise<BackendChoice> {
  if (current && (pref === 'auto' || pref === current.name)) return current;
  current = await selectBackend(pref);
  return current;
}
export { tf };

/** The backend this process initialized, if any. */
export function getBackend(): BackendName | null {
  return current?.name ?? null;
}
