/**
 * Hugging Face weight names -> our typed weight records: each family's tensor-role table lives in src/arch/ (role ->
 * HF name, shape, transpose, splits of fused tensors). Every expected key has a shape derived from the normalized
 * config; unknown, missing or mis-shaped keys are errors naming the key and both shapes. `transpose` marks
 * nn.Linear weights ([out, in] in HF) that we lay out as [in, out] once at load, so the forward pass never multiplies
 * by a transposed operand (tfjs-wasm is ~15x slower then).
 */
export type { WeightSpec, WeightPart } from '../arch/types.js';
export { expectedWeights, canonicalKey, isIgnorable } from '../arch/registry.js';
