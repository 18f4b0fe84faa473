/**
 * The architecture registry's types: the normalized ModelConfig every family's config.json becomes (the forward
 * pass, the decode runtime, the predictors and the bundle only ever see this), and the tensor-role table each family
 * declares (role -> HF name, shape, transpose, splits of fused tensors).
 */
import type { Problems } from './problems.js';

/** The MLP's activation function (HF names: relu; fatrelu; silu/swish; gelu; gelu_new, gelu_pytorch_tanh). */
export type Act = 'relu' | 'fatrelu' | 'silu' | 'gelu' | 'gelu_tanh';

/** RoPE frequency scaling (HF rope_parameters / rope_scaling); 'default' = none. */
export interface RopeScaling {
  type: 'default' | 'linear' | 'dynamic' | 'yarn' | 'llama3';
  factor: number;
  /** llama3 */
  lowFreqFactor?: number; highFreqFactor?: number;
  /** llama3, yarn: the pretraining context */
  originalMax?: number;
  /** yarn */
  betaFast?: number; betaSlow?: number; truncate?: boolean;
  /** cos / sin multiplied by this (yarn's attention factor; 1 otherwise) */
  attentionFactor: number;
}

export interface ModelConfig {
  /** the architecture's id in the registry (src/arch/registry.ts) */
  family: string;
  vocabSize: number;
  /** hidden size d */
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  maxPositions: number;
  norm: 'layernorm' | 'rmsnorm';
  normEps: number;
  /** pre-LN (x + f(norm(x))) or post-LN (norm(x + f(x))) */
  preNorm: boolean;
  finalNorm: boolean;
  /**
   * The MLP's kind for the sparsity stages: 'relu' = exact zeros (relu / fatrelu, gated or not: the lossless mode
   * applies), 'swiglu' = gated and smooth (silu, gelu), 'gelu' = ungated and smooth. The function itself: `act`.
   */
  activation: 'relu' | 'swiglu' | 'gelu';
  act: Act;
  /** fatrelu's threshold (x if x > t else 0); 0 otherwise */
  actThreshold: number;
  /** MLP = down(act(gate(x)) * up(x)) instead of down(act(up(x))) */
  gated: boolean;
  positions: 'learned' | 'rope' | 'alibi';
  /** OPT's learned positions are offset by 2 */
  positionOffset: number;
  ropeTheta: number;
  /** rotated dims of each head (partial rotary: < headDim; the rest pass through) */
  ropeDim: number;
  ropeScaling: RopeScaling | null;
  /** sequential: x + attn, then + mlp; parallel: x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX, Falcon) */
  block: 'sequential' | 'parallel';
  /** parallel blocks with one norm (Falcon's old layout): the MLP reads ln1's output */
  sharedNorm: boolean;
  /** Gemma 2: a norm on the attention output and on the MLP output before each residual add */
  sandwichNorm: boolean;
  /** Qwen3: RMSNorm of each head's q and k (over hd) before RoPE */
  qkNorm: boolean;
  /** multiplier of q·k (1/sqrt(hd), or Gemma 2's query_pre_attn_scalar^-0.5) */
  attnScale: number;
  /** tanh softcapping of attention scores / final logits (Gemma 2), null = none */
  attnSoftcap: number | null;
  finalSoftcap: number | null;
  /** per layer: sliding window (a query sees keys q - w < k <= q), null = full attention */
  windows: (number | null)[];
  /** embeddings multiplied by this (Gemma: sqrt(d) in float32), null = none */
  embedScale: number | null;
  /** a LayerNorm right after the embedding (BLOOM) */
  embedNorm: boolean;
  /** OPT word_embed_proj_dim when != hidden (project_in / project_out exist), else null */
  embedProjDim: number | null;
  tiedLmHead: boolean;
  attnBias: boolean;
  mlpBias: boolean;
  /** family-specific tensor layout flags, read only by the family's own weights() (Falcon's two decoder layouts) */
  layout?: Record<string, boolean | number | string>;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
}

/** One tensor our model holds: its name ('embed', 'layers.3.wq', ...) */
export interface WeightPart {
  name: string;
  /** the indices along the HF tensor's output axis this part takes (fused tensors), in order */
  rows: number[];
}

export interface WeightSpec {
  /** HF key (canonical: with the family's base prefix) */
  key: string;
  /** expected HF shape */
  shape: number[];
  /** nn.Linear [out, in] laid out as [in, out] at load; false: already [in, out] (GPT-2 Conv1D) or 1-D */
  transpose: boolean;
  /** our name, when the tensor maps to one of ours whole */
  name?: string;
  /** fused tensors: the parts along the output axis (rows of a Linear, columns of a Conv1D, elements of a bias) */
  parts?: WeightPart[];
  /** stored as w, used as 1 + w (Gemma's RMSNorm): folded in at load (float32, as HF computes it) */
  plusOne?: boolean;
}

/** What a family file declares. */
export interface Arch {
  id: string;
  /** HF config.json model_type values and architectures[] class names */
  modelTypes: string[];
  architectures: string[];
  /** keys of a bare-model save lack this prefix ('model.', 'transformer.', ...): prepended when that makes a key expected */
  basePrefix: string;
  /** config keys of MATH_KEYS (src/arch/registry.ts) this family's normalizer implements; any other is refused by name */
  handles?: string[];
  /** keys that may appear and carry nothing we need (buffers) */
  ignorable?: RegExp[];
  /** config.json -> ModelConfig; problems are pushed to `p` (all reported at once) */
  normalize(raw: Record<string, unknown>, p: Problems): ModelConfig;
  /** the checkpoint's tensors for a normalized config */
  weights(c: ModelConfig): WeightSpec[];
}
