"""A mixture of experts in the MLP slot (`kinds.ExpertSpec`; shapes in `parts.expert_shapes`).

Each token's router logits pick its `top_k` experts and their weights (`Router`); the
token's output is the weighted sum of those experts' gated MLPs, plus the shared
expert(s) every token visits (Qwen2-MoE scales theirs by a sigmoid gate). Only the
experts tokens chose run: the (token, expert) pairs are sorted by expert and each used
expert multiplies its own rows at once, as gpt-fast's `mixtral-moe` does, never a dense
loop over every expert for every token. Each token's routes (experts and weights) are
reported at the block's site `blocks.{layer}.mlp` to whoever asked (`attnscope.routing`).

Parameter names (relative to the block's `mlp.`), E = n_experts, w = the routed experts'
width (`MlpSpec.d_mlp`), d = the model's width:
  router.weight          [E, d]       one logit per expert (router.bias [E] where router_bias)
  experts.gate.weight    [E, w, d]    each expert's gate, up and down, stacked: expert e's
  experts.up.weight      [E, w, d]    is nn.Linear's (out, in) weight at [e]
  experts.down.weight    [E, d, w]    (experts.*.bias [E, out] where expert_bias)
  shared.gate/up/down.weight          the shared expert(s), one gated MLP of width d_shared
  shared_gate.weight     [1, d]       Qwen2-MoE: sigmoid(x · w) times the shared output
  router.scale [d], router.expert_scale [E]   Gemma 4's router (ExpertSpec.router_norm, expert_scale)
  gate/up/down.weight, dense_post_norm, experts_norm, experts_post_norm   Gemma 4's dense MLP
                                      beside the experts (d_dense) and the norms around both

Checkpoints store routed experts either fused 3-D (transformers 5.x: gate_up_proj,
down_proj) or one 2-D tensor per expert (experts.{e}.w1, gate_proj, …). A family's
table maps a per-expert tensor to `…experts.gate.weight.{e}` (`architectures.our_name`
reads the second index); `model._collect` stacks the E pieces into the 3-D parameter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnscope.config import ModelConfig
from attnscope.kinds import ExpertSpec, MlpSpec
from attnscope.parts.mlp import ACTIVATIONS, GatedMLP
from attnscope.parts.norms import make_norm


class Router(nn.Module):
    """Router logits → each token's chosen experts and their weights."""

    def __init__(self, d: int, spec: ExpertSpec, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spec.n_experts, d))
        if spec.router_bias:
            self.bias = nn.Parameter(torch.empty(spec.n_experts))
        else:
            self.bias = None
        if spec.router == "sigmoid_grouped":  # DeepSeek-V3's score-correction bias (a buffer there, never counted)
            self.score_bias = nn.Parameter(torch.empty(spec.n_experts))
        if spec.router_norm:  # Gemma 4: the input's scale per dimension, after a weightless RMSNorm
            self.scale = nn.Parameter(torch.empty(d))
        if spec.expert_scale:  # Gemma 4: each expert's scale on its weight
            self.expert_scale = nn.Parameter(torch.empty(spec.n_experts))
        self.spec, self.eps = spec, eps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, d) → weights (N, k) in float32 (float64 for float64 weights) and experts (N, k) int64."""
        if self.spec.router == "sigmoid_grouped":
            return self._sigmoid_grouped(x)
        if self.spec.router_norm:  # Gemma 4's Gemma4TextRouter: RMSNorm in float32 (no weight), × scale × 1/√d
            h = x if x.dtype == torch.float64 else x.float()
            h = (h * torch.pow(h.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)).to(x.dtype)
            x = h * self.scale * x.shape[-1] ** -0.5
        logits = F.linear(x, self.weight, self.bias)  # (N, E)
        wide = logits.double() if logits.dtype == torch.float64 else logits.float()
        spec = self.spec
        if spec.router == "topk_softmax":  # gpt-oss: the k best logits, softmax over them
            top, chosen = torch.topk(wide, spec.top_k, dim=-1)
            return torch.softmax(top, dim=-1), chosen
        probs = torch.softmax(wide, dim=-1)  # Mixtral, Qwen: softmax over all experts, then top k
        top, chosen = torch.topk(probs, spec.top_k, dim=-1)
        if spec.norm_topk_prob:
            top = top / top.sum(dim=-1, keepdim=True)
        if spec.expert_scale:  # Gemma 4: after renormalising, × each chosen expert's own scale
            top = top * self.expert_scale.to(top.dtype)[chosen]
        return top, chosen


    def _sigmoid_grouped(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """DeepSeek-V3 (transformers' DeepseekV3TopkRouter, in float32 whatever the weights):
        sigmoid scores; the score-correction bias added for choosing only; experts chosen
        within the `topk_group` groups whose two best corrected scores sum highest; weights
        the chosen experts' uncorrected scores, renormalised (+1e-20) where norm_topk_prob,
        times routed_scale."""
        spec, wide = self.spec, torch.float64 if x.dtype == torch.float64 else torch.float32
        scores = torch.sigmoid(F.linear(x.to(wide), self.weight.to(wide)))  # (N, E)
        choice = scores + self.score_bias.to(wide)  # (N, E)
        N, G = scores.shape[0], spec.n_group
        if G > 1:
            groups = choice.view(N, G, -1).topk(2, dim=-1)[0].sum(dim=-1)  # (N, G): each group's two best
            kept = torch.topk(groups, spec.topk_group, dim=-1, sorted=False)[1]  # (N, topk_group)
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, kept, True)  # (N, G)
            choice = choice.masked_fill(~mask.repeat_interleave(spec.n_experts // G, dim=1), float("-inf"))
        chosen = torch.topk(choice, spec.top_k, dim=-1, sorted=False)[1]  # (N, k)
        weights = scores.gather(1, chosen)  # (N, k)
        if spec.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * spec.routed_scale, chosen


class ExpertWeights(nn.Module):
    """One projection of every expert: weight [E, out, in] (and bias [E, out])."""

    def __init__(self, n_experts: int, d_out: int, d_in: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(n_experts, d_out)) if bias else None

    def run(self, e: int, x: Tensor) -> Tensor:
        """Expert e's projection of x (rows, in) → (rows, out)."""
        return F.linear(x, self.weight[e], None if self.bias is None else self.bias[e])


class RoutedExperts(nn.Module):
    def __init__(self, d: int, width: int, spec: ExpertSpec) -> None:
        super().__init__()
        E, bias = spec.n_experts, spec.expert_bias
        self.gate = ExpertWeights(E, width, d, bias)
        self.up = ExpertWeights(E, width, d, bias)
        self.down = ExpertWeights(E, d, width, bias)


class Experts(nn.Module):
    def __init__(self, cfg: ModelConfig, spec: MlpSpec) -> None:
        super().__init__()
        e = spec.experts
        assert e is not None  # internal invariant: kind "experts" carries its ExpertSpec
        d = cfg.d_model
        self.spec = e
        self.router = Router(d, e, cfg.norm_eps)
        self.experts = RoutedExperts(d, spec.d_mlp, e)
        self.act = ACTIVATIONS[spec.act]
        if e.d_shared:
            self.shared = GatedMLP(cfg, MlpSpec("gated", e.d_shared, spec.act))
        if e.shared_gate:
            self.shared_gate = nn.Linear(d, 1, bias=False)
        if e.d_dense:  # Gemma 4: a dense gated MLP beside the experts, each with its own norms
            self.gate = nn.Linear(d, e.d_dense, bias=False)
            self.up = nn.Linear(d, e.d_dense, bias=False)
            self.down = nn.Linear(e.d_dense, d, bias=False)
            self.dense_post_norm = make_norm(cfg)
            self.experts_norm = make_norm(cfg)
            self.experts_post_norm = make_norm(cfg)

    def forward(self, x: Tensor, hooks: Any = None, site: str = "", start: int = 0,
                residual: Tensor | None = None) -> Tensor:
        """x (T, d); `hooks` asked at `site` (`hooks.mlp_site`) for each token's `routes`
        and `route_weights` (T, k), its queries at positions `start`…. With a dense MLP
        beside the experts (`d_dense`, wiring "sandwich_moe"), x is the block's MLP-normed
        input (the dense MLP's) and `residual` the un-normed stream the router and the
        experts' own norm read: out = post1(dense(x)) + post2(experts(norm2(residual)))."""
        shape = x.shape
        beside = self.spec.d_dense > 0
        assert beside == (residual is not None), "sandwich_moe and d_dense go together"  # internal invariant
        flat = (residual if beside else x).reshape(-1, shape[-1])  # (N, d): what the router reads
        weights, chosen = self.router(flat)  # (N, k) each
        if hooks is not None:
            for what, value in (("routes", chosen), ("route_weights", weights.float())):
                if hooks.wants(site, what):
                    hooks.report(site, what, value, start, start)
        if beside:
            out = self.experts_post_norm(self.routed(self.experts_norm(flat), weights, chosen))
            dense = self.down(self.act(self.gate(x)) * self.up(x)).reshape(-1, shape[-1])
            out = self.dense_post_norm(dense) + out
        else:
            out = self.routed(flat, weights, chosen)
        if self.spec.d_shared:
            shared = self.shared(flat)
            if self.spec.shared_gate:  # Qwen2-MoE
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        return out.reshape(shape)

    def glu(self, gate: Tensor, up: Tensor) -> Tensor:
        """act(gate) · up; gpt-oss's clamped SwiGLU where the spec has `swiglu_alpha`."""
        alpha, limit = self.spec.swiglu_alpha, self.spec.swiglu_limit
        if alpha is None:
            return self.act(gate) * up
        if limit is not None:
            gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))

    def routed(self, flat: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """Σ over each token's chosen experts of weight × expert(token), running each used
        expert once on all of its tokens (token-expert pairs grouped by expert)."""
        k = chosen.shape[-1]
        pairs = chosen.reshape(-1)  # (N·k,): pair p is token p // k's choice p % k
        order = torch.argsort(pairs, stable=True)  # pairs grouped by expert
        token = order // k
        counts = torch.bincount(pairs, minlength=self.spec.n_experts).tolist()
        rows = flat[token]  # (N·k, d), in expert order
        ex, outs, at = self.experts, [], 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            h = rows[at:at + n]
            outs.append(ex.down.run(e, self.glu(ex.gate.run(e, h), ex.up.run(e, h))))
            at += n
        if not outs:  # no tokens
            return torch.zeros_like(flat)
        y = torch.cat(outs) * weights.reshape(-1)[order, None].to(flat.dtype)  # (N·k, d)
        return torch.zeros_like(flat).index_add_(0, token, y)
