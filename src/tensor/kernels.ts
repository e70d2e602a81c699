// Every libtorch operator kshare calls, in one place: our kernel name -> ATen schema name.
// Op fronts (ops/*.ts) validate arguments, then call `runKernel`, which resolves the
// operator once and lets the addon convert arguments by the operator's own schema.
import { native, type Handle, type KernelArg } from './native.js';
import { recordCall } from './trace.js';

export const KERNELS = {
  // creation
  zeros: 'aten::zeros',
  ones: 'aten::ones',
  full: 'aten::full',
  empty: 'aten::empty',
  arangeStartStep: 'aten::arange.start_step',
  randn: 'aten::randn',
  randnGen: 'aten::randn.generator',
  rand: 'aten::rand',
  randGen: 'aten::rand.generator',
  randint: 'aten::randint.low',
  randintGen: 'aten::randint.low_generator',
  randperm: 'aten::randperm',
  randpermGen: 'aten::randperm.generator',
  normal_: 'aten::normal_',
  uniform_: 'aten::uniform_',
  bernoulliP: 'aten::bernoulli.p',
  zerosLike: 'aten::zeros_like',
  onesLike: 'aten::ones_like',
  fullLike: 'aten::full_like',
  // conversion / memory
  toDtypeLayout: 'aten::to.dtype_layout',
  contiguous: 'aten::contiguous',
  clone: 'aten::clone',
  detach: 'aten::detach',
  copy_: 'aten::copy_',
  fill_: 'aten::fill_.Scalar',
  zero_: 'aten::zero_',
  // is_contiguous is a TorchScript builtin, not a dispatcher op: isContiguous reads strides.
  stride: 'aten::stride.int',
  setData: 'aten::set_data',
  // elementwise binary
  add: 'aten::add.Tensor',
  addScalar: 'aten::add.Scalar',
  sub: 'aten::sub.Tensor',
  subScalar: 'aten::sub.Scalar',
  mul: 'aten::mul.Tensor',
  mulScalar: 'aten::mul.Scalar',
  div: 'aten::div.Tensor',
  divScalar: 'aten::div.Scalar',
  pow: 'aten::pow.Tensor_Scalar',
  maximum: 'aten::maximum',
  minimum: 'aten::minimum',
  add_: 'aten::add_.Tensor',
  addScalar_: 'aten::add_.Scalar',
  mul_: 'aten::mul_.Tensor',
  mulScalar_: 'aten::mul_.Scalar',
  sub_: 'aten::sub_.Tensor',
  div_: 'aten::div_.Tensor',
  divScalar_: 'aten::div_.Scalar',
  lerp_: 'aten::lerp_.Scalar',
  addcmul_: 'aten::addcmul_',
  addcdiv_: 'aten::addcdiv_',
  // elementwise unary
  neg: 'aten::neg',
  exp: 'aten::exp',
  log: 'aten::log',
  sqrt: 'aten::sqrt',
  rsqrt: 'aten::rsqrt',
  abs: 'aten::abs',
  tanh: 'aten::tanh',
  sigmoid: 'aten::sigmoid',
  relu: 'aten::relu',
  relu_: 'aten::relu_',
  gelu: 'aten::gelu',
  floor: 'aten::floor',
  round: 'aten::round',
  sign: 'aten::sign',
  clamp: 'aten::clamp',
  clampTensor: 'aten::clamp.Tensor',
  isfinite: 'aten::isfinite',
  logicalNot: 'aten::logical_not',
  logicalAnd: 'aten::logical_and',
  logicalOr: 'aten::logical_or',
  // comparison
  eq: 'aten::eq.Tensor',
  eqScalar: 'aten::eq.Scalar',
  ne: 'aten::ne.Tensor',
  neScalar: 'aten::ne.Scalar',
  lt: 'aten::lt.Tensor',
  ltScalar: 'aten::lt.Scalar',
  le: 'aten::le.Tensor',
  leScalar: 'aten::le.Scalar',
  gt: 'aten::gt.Tensor',
  gtScalar: 'aten::gt.Scalar',
  ge: 'aten::ge.Tensor',
  geScalar: 'aten::ge.Scalar',
  where: 'aten::where.self',
  whereScalar: 'aten::where.ScalarOther',
  // reductions
  sumAll: 'aten::sum',
  sumDim: 'aten::sum.dim_IntList',
  meanAll: 'aten::mean',
  meanDim: 'aten::mean.dim',
  maxAll: 'aten::max',
  maxDim: 'aten::max.dim',
  minAll: 'aten::min',
  minDim: 'aten::min.dim',
  argmax: 'aten::argmax',
  argmin: 'aten::argmin',
  norm: 'aten::linalg_vector_norm',
  var: 'aten::var.correction',
  allAll: 'aten::all',
  anyAll: 'aten::any',
  topk: 'aten::topk',
  sort: 'aten::sort',
  cumsum: 'aten::cumsum',
  amax: 'aten::amax',
  amin: 'aten::amin',
  // shape
  reshape: 'aten::reshape',
  view: 'aten::view',
  pixelUnshuffle: 'aten::pixel_unshuffle',
  permute: 'aten::permute',
  transpose: 'aten::transpose.int',
  flatten: 'aten::flatten.using_ints',
  squeezeDim: 'aten::squeeze.dim',
  unsqueeze: 'aten::unsqueeze',
  expand: 'aten::expand',
  cat: 'aten::cat',
  stack: 'aten::stack',
  slice: 'aten::slice.Tensor',
  narrow: 'aten::narrow',
  select: 'aten::select.int',
  repeat: 'aten::repeat',
  flip: 'aten::flip',
  roll: 'aten::roll',
  pad: 'aten::constant_pad_nd',
  reflectionPad2d: 'aten::reflection_pad2d',
  replicationPad2d: 'aten::replication_pad2d',
  // indexing
  indexSelect: 'aten::index_select',
  gather: 'aten::gather',
  scatter: 'aten::scatter.src',
  scatterValue: 'aten::scatter.value',
  index: 'aten::index.Tensor',
  maskedFill: 'aten::masked_fill.Scalar',
  oneHot: 'aten::one_hot',
  scatterAdd: 'aten::scatter_add',
  indexCopy: 'aten::index_copy',
  standardGamma: 'aten::_standard_gamma',
  // nn
  conv2d: 'aten::conv2d',
  conv2dPadding: 'aten::conv2d.padding',
  batchNorm: 'aten::batch_norm',
  linear: 'aten::linear',
  matmul: 'aten::matmul',
  // oneDNN's convolution called directly: 1x1 convolutions at small batch where kshare's 1x1 operator is not built (see ops/conv.ts)
  mkldnnConv2d: 'aten::mkldnn_convolution',
  // kshare's depthwise convolution (native/depthwise_conv.cc; conv2d routes to it where it applies)
  depthwiseConv2d: 'kshare::depthwise_conv2d',
  depthwiseConv2dBackward: 'kshare::depthwise_conv2d_backward',
  // kshare's 1x1 convolution on oneDNN's sgemm (native/pointwise_conv.cc, where built; conv2d routes to it)
  pointwiseConv2d: 'kshare::pointwise_conv2d',
  pointwiseConv2dBackward: 'kshare::pointwise_conv2d_backward',
  // kshare's 3x3 convolution on AMX tiles (native/amx_conv3x3.cc; conv2d routes to it on CPUs with AMX)
  conv3x3: 'kshare::conv3x3',
  conv3x3Backward: 'kshare::conv3x3_backward',
  adaptiveAvgPool2d: 'aten::adaptive_avg_pool2d',
  avgPool2d: 'aten::avg_pool2d',
  maxPool2d: 'aten::max_pool2d',
  dropout: 'aten::dropout',
  softmax: 'aten::softmax.int',
  logSoftmax: 'aten::log_softmax.int',
  nllLoss: 'aten::nll_loss',
  crossEntropy: 'aten::cross_entropy_loss',
  gridSampler2d: 'aten::grid_sampler',
  affineGrid: 'aten::affine_grid_generator',
  interpolateBilinear: 'aten::upsample_bilinear2d',
  // kshare's own CPU kernels (native/*.cc, registered with libtorch's dispatcher)
  biasGeluBatchNorm: 'kshare::bias_gelu_batch_norm',
  depthwiseGeluBatchNormResidual: 'kshare::depthwise_gelu_bn_residual',
  pointwiseGeluBatchNorm: 'kshare::pointwise_gelu_bn',
  convMixerBlocks: 'kshare::convmixer_blocks',
  convMixerBlock: 'kshare::convmixer_block',
  convMixerTrainingBlocks: 'kshare::convmixer_training_blocks',
  batchNormRelu: 'kshare::batch_norm_relu',
  batchNormNative: 'kshare::batch_norm',
  batchNormPool: 'kshare::batch_norm_pool',
  channelScaleAdd: 'kshare::channel_scale_add',
  // multi-tensor (optimizers)
  foreachMulScalar_: 'aten::_foreach_mul_.Scalar',
  foreachAddList_: 'aten::_foreach_add_.List',
  foreachAddScalar_: 'aten::_foreach_add_.Scalar',
  foreachAddcmulScalar_: 'aten::_foreach_addcmul_.Scalar',
  foreachAddcdivScalar_: 'aten::_foreach_addcdiv_.Scalar',
  foreachSqrt: 'aten::_foreach_sqrt',
  foreachDivScalar_: 'aten::_foreach_div_.Scalar',
  foreachMulList_: 'aten::_foreach_mul_.List',
  foreachNorm: 'aten::_foreach_norm.Scalar',
  foreachZero_: 'aten::_foreach_zero_',
  adamw_: 'kshare::adamw_',
  ampUnscale_: 'aten::_amp_foreach_non_finite_check_and_unscale_',
  ampUpdateScale_: 'aten::_amp_update_scale_',
} as const;

export type KernelName = keyof typeof KERNELS;

const ids = new Map<KernelName, number>();

function resolve(opName: string, name: KernelName): number {
  let id = ids.get(name);
  if (id === undefined) {
    const [op, overload = ''] = KERNELS[name].split('.');
    try {
      id = native.opId(op!, overload);
    } catch (e) {
      if (!op!.startsWith('kshare::')) throw e;
      // Only a build without oneDNN leaves kshare's operators out (its 1x1 and block operators).
      const why = !native.runtimeInfo().pointwiseKernel
        ? 'it needs oneDNN when the addon is built (Debian: apt-get install libdnnl-dev, then npm run build:native)'
        : 'rebuild the addon (npm run build:native)';
      throw new Error(`${opName}: ${KERNELS[name]} is not in this build of kshare's addon: ${why}`);
    }
    ids.set(name, id);
  }
  return id;
}

/** Calls a libtorch operator; libtorch errors become Errors naming our op and ATen's. */
export function runKernel(opName: string, kernel: KernelName, args: KernelArg[]): unknown {
  const id = resolve(opName, kernel);
  let out: unknown;
  try {
    out = native.call(id, args);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    // The addon shortens libtorch's message; the full text rides along for KSHARE_DEBUG.
    const full = (e as { libtorchMessage?: string }).libtorchMessage;
    throw Object.assign(new Error(`${opName}: ${msg}`), full ? { libtorchMessage: full } : {});
  }
  recordCall(opName, kernel, args, out);
  return out;
}

/** The schema libtorch reports for a kernel (for docs and debugging). */
export function kernelSchema(kernel: KernelName): string {
  return native.opSchema(resolve(`kernelSchema(${kernel})`, kernel));
}

export type { Handle };

/** Runs an in-place operator and releases the handle(s) it returns (they alias the inputs). */
export function runKernelInPlace(opName: string, kernel: KernelName, args: KernelArg[]): void {
  const out = runKernel(opName, kernel, args);
  if (Array.isArray(out)) for (const h of out) native.dispose(h as Handle);
  else if (out !== null && out !== undefined) native.dispose(out as Handle);
}
