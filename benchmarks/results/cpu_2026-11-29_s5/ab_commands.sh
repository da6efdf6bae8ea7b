#!/usr/bin/env bash
# The A/B runs behind ab_whiten.jsonl and ab_layers_b*.jsonl (RESULTS.md, session 5): each
# variant edits the current source back to what it was before the change it measures.
# Run from the repository root with the venv active.
set -e
R=benchmarks/results/cpu_2026-11-29_s5
OLDW='  x = jnp.reshape(x, shape[:-3] + (-1,))\n  mean = jnp.mean(x, axis=-1, keepdims=True)\n  std = jnp.std(x, axis=-1, keepdims=True)\n  return jnp.reshape((x - mean) / jnp.maximum(std, 1.0 / np.sqrt(x.shape[-1])), shape)'
NEWW='  axes = (-3, -2, -1)\n  mean = jnp.mean(x, axis=axes, keepdims=True)\n  std = jnp.std(x, axis=axes, keepdims=True)\n  return (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(shape[-3] * shape[-2] * shape[-1]))'
for reps in 32 8; do
python benchmarks/ab_source.py --module zhang.data --model mlp_1x512 --replicas $reps --steps 10 --rounds 8 \
  --variant "hwc_axes=$OLDW>>>$NEWW" --variant current | tee -a $R/ab_whiten.jsonl
done
OLDDX='  rows = [_phase(hw[0], oh, kh, sh, padding[0][0], a) for a in range(sh)]'
NEWDX='  if True:  # dy dilated by the stride\n    return lax.conv_general_dilated(dy, jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2)), (1, 1), ((kh - 1 - padding[0][0], hw[0] - (oh - 1) * sh - 1 + padding[0][0]), (kw - 1 - padding[1][0], hw[1] - (ow - 1) * sw - 1 + padding[1][0])), lhs_dilation=(sh, sw), dimension_numbers=_NHWC, precision=precision)\n'"$OLDDX"
python benchmarks/ab_source.py --model inception_small --batch_size 128 --steps 2 --rounds 8 \
  --variant "dilated_dy=$OLDDX>>>$NEWDX" \
  --variant "x_always_batch=dy_as_batch = (sh, sw) == (1, 1) and dy.shape[3] < x.shape[3]>>>dy_as_batch = False" \
  --variant current | tee $R/ab_layers_b128.jsonl
python benchmarks/ab_source.py --model inception_small --batch_size 32 --steps 4 --rounds 8 \
  --variant "dilated_dy=$OLDDX>>>$NEWDX" \
  --variant "x_always_batch=dy_as_batch = (sh, sw) == (1, 1) and dy.shape[3] < x.shape[3]>>>dy_as_batch = False" \
  --variant current | tee $R/ab_layers_b32.jsonl
