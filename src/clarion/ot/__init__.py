"""Entropic optimal transport for training: balanced Sinkhorn and entropic partial OT.

Plain functions on tensors (cost [..., n, m], batched over leading dims, any device and float
dtype). Solvers iterate in the log domain without autograd; plans get their gradient w.r.t. the
cost by implicit differentiation at the fixed point (:mod:`.implicit`).
"""

from .implicit import gibbs_plan, plan_vjp
from .partial import partial_sinkhorn
from .sinkhorn import OTResult, sinkhorn

__all__ = ["OTResult", "gibbs_plan", "partial_sinkhorn", "plan_vjp", "sinkhorn"]
