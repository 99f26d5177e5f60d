"""Formulas for the ops torch's FlopCounterMode misses or miscounts, and the counter using them.

Why our own formulas (torch 2.13, CPU; see docs/measurement.md, "FLOPs"):
- a sparse operand of mm/addmm/bmm is counted by torch as the dense product, and
  torch.sparse.mm (aten._sparse_addmm) is not counted at all: we count 2 x nnz x N;
- CPU attention (aten._scaled_dot_product_flash_attention_for_cpu and its backward) counts 0:
  we count it like torch counts the other fused attention kernels;
- the inference fast paths of nn.MultiheadAttention (aten._native_multi_head_attention) and
  nn.TransformerEncoderLayer (aten._transformer_encoder_layer_fwd) are single fused ops that
  count 0 (on CPU and CUDA): we count their projections, attention and FFN Linears.
The formulas read the raw tensors (get_raw), because nnz is not in a shape.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _is_sparse(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.layout != torch.strided


def nnz(t: torch.Tensor) -> int:
    """Stored elements of a sparse tensor (blocks count all their elements)."""
    return (t._values() if t.layout == torch.sparse_coo else t.values()).numel()


def _coo_indices(t: torch.Tensor) -> torch.Tensor:
    return (t if t.layout == torch.sparse_coo else t.to_sparse_coo())._indices()


def _sparse_sparse_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    """Exact products of sparse (M,K) @ sparse (K,N): sum over k of nnz(a[:,k]) * nnz(b[k,:])."""
    k = a.shape[-1]
    per_col = torch.bincount(_coo_indices(a)[1], minlength=k)
    per_row = torch.bincount(_coo_indices(b)[0], minlength=k)
    return 2 * int((per_col * per_row).sum())


def matmul_flops(a: torch.Tensor, b: torch.Tensor) -> int:
    """2 x MACs of a @ b for 2-D or batched 3-D operands, counting a sparse side by its nnz."""
    if _is_sparse(a) and _is_sparse(b) and a.dim() == 2:
        return _sparse_sparse_flops(a, b)
    if _is_sparse(a):
        return 2 * nnz(a) * b.shape[-1]
    if _is_sparse(b):
        return 2 * a.shape[-2] * nnz(b)
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _mm(a, b, *args, out_val=None, **kwargs) -> int:
    return matmul_flops(a, b)


def _addmm(bias, a, b, *args, out_val=None, **kwargs) -> int:
    return matmul_flops(a, b)


def _sampled_addmm(mask, a, b, *args, out_val=None, **kwargs) -> int:
    """a @ b evaluated only where the sparse mask has entries."""
    return 2 * nnz(mask) * a.shape[-1]


def attention_flops(q_shape, k_shape, v_shape) -> int:
    """Q K^T then P V, per query head (grouped K/V heads are broadcast); no causal discount."""
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * (d + dv)


def attention_backward_flops(q_shape, k_shape, v_shape) -> int:
    """Fused-kernel backward: recompute Q K^T, then dP, dV, dQ, dK (as torch counts flash)."""
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * (3 * d + 2 * dv)


def _sdpa_cpu(q, k, v, *args, out_val=None, **kwargs) -> int:
    return attention_flops(q.shape, k.shape, v.shape)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    return attention_backward_flops(q.shape, k.shape, v.shape)


def _lengths(t: torch.Tensor) -> list[int]:
    """Sequence length of each batch element of a (B, L, E) tensor, nested (ragged) or not."""
    if t.is_nested:
        return [int(s.shape[0]) for s in t.unbind()]
    return [int(t.shape[1])] * int(t.shape[0])


def fused_attention_block_flops(q_lengths: list[int], k_lengths: list[int], embed_dim: int) -> int:
    """Q, K, V and output projections plus Q K^T and P V, summed over the batch (all heads)."""
    e = embed_dim
    return sum(2 * lq * e * e + 4 * lk * e * e + 4 * lq * lk * e + 2 * lq * e * e
               for lq, lk in zip(q_lengths, k_lengths))


def _native_mha(query, key, value, embed_dim, num_head, *args, out_val=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path (one fused op; torch counts 0)."""
    return fused_attention_block_flops(_lengths(query), _lengths(key), int(embed_dim))


def _encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
                       norm_first, eps, nw1, nb1, nw2, nb2, ffn_weight_1, *args, out_val=None, **kwargs) -> int:
    """nn.TransformerEncoderLayer's inference fast path: self-attention block plus the two FFN Linears."""
    lengths = _lengths(src)
    ffn = int(ffn_weight_1.shape[0])
    return fused_attention_block_flops(lengths, lengths, int(embed_dim)) + sum(4 * n * int(embed_dim) * ffn for n in lengths)


def _raw(fn: Callable[..., int]) -> Callable[..., int]:
    fn._get_raw = True  # FlopCounterMode then passes tensors, not shapes
    return fn


def flop_mapping() -> dict[Any, Callable[..., int]]:
    """custom_mapping for FlopCounterMode: sparse-aware matmuls and CPU attention."""
    mapping = {
        aten.mm: _mm,
        aten.bmm: _mm,
        aten.addmm: _addmm,
        aten.baddbmm: _addmm,
        aten._sparse_addmm: _addmm,
        aten.sspaddmm: _addmm,
        aten.hspmm: _mm,
        aten._sparse_sparse_matmul: _mm,
        aten.sparse_sampled_addmm: _sampled_addmm,
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
        aten._native_multi_head_attention: _native_mha,
        aten._transformer_encoder_layer_fwd: _encoder_layer_fwd,
    }
    return {op: _raw(fn) for op, fn in mapping.items()}


def make_counter() -> FlopCounterMode:
    """A silent FlopCounterMode with our formulas installed."""
    return FlopCounterMode(display=False, custom_mapping=flop_mapping())
