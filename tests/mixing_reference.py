"""Test-only ports of the authors' own computations of ALTI and Value Zeroing, run on
transformers models; attnscope never imports this.

* ALTI (post-norm BERT): mt-upc/transformer-contributions, src/contributions.py,
  `ModelWrapper.get_contributions` with `pre_layer_norm False` (forward hooks keep each
  module's inputs and outputs; T_i(x_j) = l_transform(Σ_h α_hij f_h(x_j) + [i = j] x_j,
  γ) / std(pre-LN state), the std taken without the norm's eps as theirs is;
  importance = −pairwise_distance(T_i(x_j), y_i, p=1), which adds its eps of 1e-6 to
  every component), then src/utils_contributions.py `normalize_contributions(...,
  scaling='min_sum', resultant_norm=‖y_i‖₁)` and `compute_joint_attention`.
* ALTI (pre-norm decoders): mt-upc/logit-explanations, src/contributions.py,
  `get_logit_contributions`' layer-wise part: T_i(x_j) = Σ_h α_hij (LN(x_j) W_V^h +
  b_V^h) W_O^h + [i = j] x_j (their `aff_x_j + residual`), y_i = Σ_j T_i(x_j) + b_O,
  importance −pairwise_distance(·, p=1), the same normalisation.
* Value Zeroing: hmohebbi/ValueZeroing, demo.py and modeling/customized_modeling_bert.py:
  each layer re-run on the previous layer's original output with `value_layer[:, :, t]
  = 0`, sklearn's `cosine_distances(new, original).diagonal()` into score[l, :, t], rows
  divided by their sum. The zeroing is a forward hook on the value projection here
  (the same tensor, before the heads are split), the cosine distance written out as
  sklearn computes it (rows normalised, 1 − their dot product).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _encoder_layers(model: Any) -> Any:
    base = model.bert if hasattr(model, "bert") else model
    return base.encoder.layer


def _bert_inputs(ids: list[int]) -> dict[str, Tensor]:
    x = torch.tensor([ids])
    return {"input_ids": x, "token_type_ids": torch.zeros_like(x), "attention_mask": torch.ones_like(x)}


def l_transform(x: Tensor, w_ln: Tensor) -> Tensor:
    """Their `l_transform`: mean removal and the LayerNorm weight as one linear map."""
    ln_param_transf = torch.diag(w_ln)
    ln_mean_transf = torch.eye(w_ln.size(0), dtype=w_ln.dtype) - 1 / w_ln.size(0) * torch.ones_like(ln_param_transf)
    return torch.einsum("... e , e f , f g -> ... g", x, ln_mean_transf, ln_param_transf)


def normalize_min_sum(contributions: Tensor, resultant_norm: Tensor) -> Tensor:
    """`normalize_contributions(scaling='min_sum', resultant_norm=...)`, layer by layer."""
    out = torch.zeros(contributions.size(), dtype=contributions.dtype)
    for layer in range(contributions.size(0)):
        c = contributions[layer] + torch.abs(resultant_norm[layer].unsqueeze(1))
        c = torch.clip(c, min=0)
        out[layer] = c / c.sum(dim=-1, keepdim=True)
    return out


def compute_joint_attention(att_mat: Tensor) -> Tensor:
    joint = att_mat[0].unsqueeze(0)
    for i in range(1, att_mat.shape[0]):
        joint = torch.cat([joint, torch.matmul(att_mat[i], joint[i - 1]).unsqueeze(0)], dim=0)
    return joint


@torch.no_grad()
def alti_bert(model: Any, ids: list[int], eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(per-layer C, rolled out), each (L, n, n), for a transformers BERT in its own dtype.
    `eps`: pairwise_distance's, 1e-6 in theirs (0 gives the definition exactly)."""
    layers = _encoder_layers(model)
    func_inputs: dict[str, list[Any]] = collections.defaultdict(list)
    func_outputs: dict[str, list[Any]] = collections.defaultdict(list)

    def save(name: str, _mod: Any, inp: Any, out: Any) -> None:
        func_inputs[name].append(inp)
        func_outputs[name].append(out)

    handles = [m.register_forward_hook(partial(save, name)) for name, m in layers.named_modules()]
    try:
        out = model(**_bert_inputs(ids), output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    H = model.config.num_attention_heads
    dh = model.config.hidden_size // H
    importance, resultants = [], []
    for layer in range(len(layers)):
        hidden_states = out.hidden_states[layer]
        attention_probs = out.attentions[layer]
        values = func_outputs[f"{layer}.attention.self.value"][0]
        value_layer = values.view(values.shape[0], values.shape[1], H, dh).permute(0, 2, 1, 3)
        mod = layers[layer].attention.output
        dense, ln1 = mod.dense, mod.LayerNorm
        pre_ln_states = func_inputs[f"{layer}.attention.output.LayerNorm"][0][0]
        post_ln_states = func_outputs[f"{layer}.attention.output.LayerNorm"][0]
        w = dense.weight.view(H * dh, H, dh)
        transformed_layer = torch.einsum("bhsv,dhv->bhsd", value_layer, w)
        weighted_layer = torch.einsum("bhks,bhsd->bhksd", attention_probs, transformed_layer)
        summed_weighted_layer = weighted_layer.sum(dim=1)
        n = hidden_states.size(1)
        residual = torch.einsum("sk,bsd->bskd", torch.eye(n, dtype=hidden_states.dtype), hidden_states)
        residual_weighted_layer = summed_weighted_layer + residual
        transformed_vectors = l_transform(residual_weighted_layer, ln1.weight.data)
        attn_output = transformed_vectors.sum(dim=2)
        dense_bias_term = l_transform(dense.bias, ln1.weight.data)
        ln_std_coef = 1 / (pre_ln_states + ln1.eps).std(-1, unbiased=False).view(1, -1, 1)
        resultant = (attn_output + dense_bias_term) * ln_std_coef + ln1.bias
        transformed_vectors_std = l_transform(residual_weighted_layer, ln1.weight.data) * ln_std_coef.unsqueeze(-1)
        assert torch.dist(resultant, post_ln_states).item() < 1e-3 * post_ln_states.numel()
        importance.append(torch.squeeze(-F.pairwise_distance(transformed_vectors_std, resultant.unsqueeze(2), p=1,
                                                             eps=eps)))
        resultants.append(torch.squeeze(resultant))
    contributions = torch.stack(importance)
    resultant_norm = torch.norm(torch.stack(resultants), p=1, dim=-1)
    per_layer = normalize_min_sum(contributions, resultant_norm)
    return per_layer, compute_joint_attention(per_layer)


@torch.no_grad()
def alti_gpt2(model: Any, ids: list[int], eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(per-layer C, rolled out) for a transformers GPT-2 (pre-norm), as ALTI-Logit's
    layer-wise contributions: the affine T_i(x_j) plus the residual."""
    blocks = model.transformer.h if hasattr(model, "transformer") else model.h
    inputs: dict[int, Tensor] = {}
    mids: dict[int, Tensor] = {}
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.ln_1.register_forward_hook(lambda _m, inp, _o, i=i: inputs.__setitem__(i, inp[0])))
        handles.append(block.ln_2.register_forward_hook(lambda _m, inp, _o, i=i: mids.__setitem__(i, inp[0])))
    try:
        out = model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    d = model.config.n_embd
    H = model.config.n_head
    dh = d // H
    importance, resultants = [], []
    for layer, block in enumerate(blocks):
        a_mat = out.attentions[layer].squeeze(0)  # (H, t, s)
        ln1 = block.ln_1
        w_v = block.attn.c_attn.weight[:, 2 * d:].view(d, H, dh)  # Conv1D: (in, out)
        b_v = block.attn.c_attn.bias[2 * d:].view(H, dh)
        w_o = block.attn.c_proj.weight.T.reshape(d, H, dh)  # (d_out, H, dh)
        b_o = block.attn.c_proj.bias
        b_ln1_w_v = torch.einsum("d,dhz->hz", ln1.bias, w_v) + b_v
        gamma_l_h = torch.einsum("hz,dhz->hd", b_ln1_w_v, w_o)
        biases_term_src = torch.einsum("hts,hd->htsd", a_mat, gamma_l_h).sum(0)
        layer_input = inputs[layer].squeeze(0)  # (s, d)
        var = torch.var(layer_input, unbiased=False, dim=-1)
        l_layer_input = l_transform(layer_input, ln1.weight) / torch.sqrt(var + ln1.eps)[:, None]
        v_j_heads = torch.einsum("sd,dhz->hsz", l_layer_input, w_v)
        lin_x_j_w_o_heads = torch.einsum("hsz,dhz->hsd", v_j_heads, w_o)
        lin_x_j = torch.einsum("hsd,hts->htsd", lin_x_j_w_o_heads, a_mat).sum(0)
        aff_x_j = biases_term_src + lin_x_j
        hidden = out.hidden_states[layer].squeeze(0)
        residual = torch.einsum("sk,sd->skd", torch.eye(hidden.shape[0], dtype=hidden.dtype), hidden)
        res_and_aff_x_j = aff_x_j + residual
        attn_res_output = res_and_aff_x_j.sum(1) + b_o
        real = mids[layer].squeeze(0)
        assert torch.dist(attn_res_output, real).item() < 1e-3 * real.numel()
        importance.append(-F.pairwise_distance(res_and_aff_x_j, attn_res_output.unsqueeze(1), p=1, eps=eps))
        resultants.append(attn_res_output)
    contributions = torch.stack(importance)
    resultant_norm = torch.norm(torch.stack(resultants), p=1, dim=-1)
    per_layer = normalize_min_sum(contributions, resultant_norm)
    return per_layer, compute_joint_attention(per_layer)


def _cosine_distances_diagonal(x: Tensor, y: Tensor) -> Tensor:
    """sklearn's `cosine_distances(x, y).diagonal()`: rows normalised, 1 − x̂·ŷ, clipped to [0, 2]."""
    xn = x / x.norm(dim=-1, keepdim=True)
    yn = y / y.norm(dim=-1, keepdim=True)
    return (1 - (xn * yn).sum(-1)).clip(0, 2)


@torch.no_grad()
def value_zeroing_bert(model: Any, ids: list[int]) -> tuple[Tensor, Tensor]:
    """Value Zeroing (L, n, n), rows normalised, and the raw distances, for a transformers
    BERT in its own dtype."""
    layers = _encoder_layers(model)
    out = model(**_bert_inputs(ids), output_hidden_states=True)
    org_hidden_states = torch.stack(out.hidden_states).squeeze(1)
    n = len(ids)
    score_matrix = torch.zeros(len(layers), n, n, dtype=org_hidden_states.dtype)
    for layer, layer_module in enumerate(layers):
        for t in range(n):
            def zero(_m: Any, _inp: Any, value: Tensor, t: int = t) -> Tensor:
                value = value.clone()
                value[:, t] = 0  # value_layer[:, :, t] = 0 once the heads are split
                return value

            handle = layer_module.attention.self.value.register_forward_hook(zero)
            try:
                hidden = layer_module(org_hidden_states[layer].unsqueeze(0), attention_mask=None)
            finally:
                handle.remove()
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            score_matrix[layer, :, t] = _cosine_distances_diagonal(hidden.squeeze(0), org_hidden_states[layer + 1])
    return score_matrix / score_matrix.sum(-1, keepdim=True), score_matrix


@torch.no_grad()
def value_zeroing_direct(model: Any, ids: list[int], blocks: Any, zero_value: Any) -> tuple[Tensor, Tensor]:
    """Value Zeroing (L, n, n) of any transformers decoder by brute force: for each layer l
    and token j, the whole model re-run with j's value rows zeroed at layer l (a forward
    hook `zero_value(block, j)` returning its handle), block l's output compared with the
    original by the cosine distance, computed as 1 − cos in the model's dtype; rows
    normalised, and the raw distances."""
    n = len(ids)
    x = torch.tensor([ids])
    outs: dict[int, Tensor] = {}
    handles = [b.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, (o[0] if isinstance(o, tuple) else o)))
               for i, b in enumerate(blocks)]
    try:
        model(x)
        original = {i: t.squeeze(0).clone() for i, t in outs.items()}
        scores = torch.zeros(len(blocks), n, n, dtype=original[0].dtype)
        for layer, block in enumerate(blocks):
            for j in range(n):
                handle = zero_value(block, j)
                try:
                    model(x)
                finally:
                    handle.remove()
                scores[layer, :, j] = _cosine_distances_diagonal(outs[layer].squeeze(0), original[layer])
    finally:
        for h in handles:
            h.remove()
    return scores / scores.sum(-1, keepdim=True), scores


def zero_gpt2_value(block: Any, j: int) -> Any:
    d = block.attn.c_attn.weight.shape[0]

    def hook(_m: Any, _i: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, j, 2 * d:] = 0  # the value third of the fused projection
        return out

    return block.attn.c_attn.register_forward_hook(hook)


def zero_llama_value(block: Any, j: int) -> Any:
    def hook(_m: Any, _i: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, j] = 0
        return out

    return block.self_attn.v_proj.register_forward_hook(hook)


@contextlib.contextmanager
def llama_in_float64() -> Iterator[None]:
    """transformers' eager Llama and Mistral with their softmax and RMSNorm in the input's
    dtype (they take both in float32 whatever the dtype), so a float64 reference is
    float64 but for its RoPE tables, which it makes in float32 as attnscope does."""
    import transformers.models.llama.modeling_llama as ml
    import transformers.models.mistral.modeling_mistral as mm

    def rms(self: Any, hidden_states: Tensor) -> Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    def eager(module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              scaling: float, dropout: float = 0.0, **_kw: Any) -> tuple[Tensor, Tensor]:
        key_states = ml.repeat_kv(key, module.num_key_value_groups)
        value_states = ml.repeat_kv(value, module.num_key_value_groups)
        weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, dim=-1)
        return torch.matmul(weights, value_states).transpose(1, 2).contiguous(), weights

    saved = [(ml, ml.LlamaRMSNorm), (mm, mm.MistralRMSNorm)]
    old = [(mod, mod.eager_attention_forward, norm, norm.forward) for mod, norm in saved]
    for mod, norm in saved:
        mod.eager_attention_forward, norm.forward = eager, rms  # type: ignore[method-assign]
    try:
        yield
    finally:
        for mod, attn, norm, forward in old:
            mod.eager_attention_forward, norm.forward = attn, forward  # type: ignore[method-assign]
