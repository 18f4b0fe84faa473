/** Public API of dejavu-ts. */
export { loadModel, type Model, type LoadOptions, type LayerWeights } from './model/model.js';
export { forward, newCache, disposeCache, disposeOutput, type ForwardOptions, type ForwardOutput, type CaptureOptions, type SparsityHooks, type MlpSelection, type HeadSelection, type KVCache } from './model/forward.js';
export { normalizeConfig, type ModelConfig } from './model/config.js';
export { loadTokenizer, type LoadedTokenizer } from './tokenizer.js';
export { selectBackend, ensureBackend, type BackendChoice, type BackendPreference } from './backend.js';
export { openSafetensors, readTensorF32, writeSafetensors } from './checkpoint/safetensors.js';
export { openCheckpoint, fingerprintCheckpoint } from './checkpoint/checkpoint.js';
export { loadPredictors, predictorHooks } from './predictors/hooks.js';
export { exportBundle, verifyBundle, loadBundlePredictors } from './bundle/bundle.js';
export { generate, decodeNll } from './runtime/generate.js';
export { DecodeSession, denseModes, type DecodeModes } from './runtime/decoder.js';
export { decodeModes, type RuntimePlan } from './runtime/plan.js';
export { runCli } from './cli/program.js';
export { UserError } from './util/errors.js';
