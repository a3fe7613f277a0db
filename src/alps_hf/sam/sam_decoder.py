"""SAM's mask decoder for many point prompts on one image, with the per-image work done once.

transformers' `SamMaskDecoder.forward` copies the image embedding and its positional encoding once
per prompt (`repeat_interleave`) and then runs every projection of the two-way transformer on each
copy. Until the first image-to-token attention writes into it, that copy is the same for every
prompt, so the first block's key / value projections (token-to-image) and query projection
(image-to-token) depend on the image alone: here they run once per call and are broadcast. The
upscaling transposed convolutions (kernel 2, stride 2) are per-pixel linear maps, so they run as
matrix products on channels-last tokens with the layer norm over the last dimension, without the
channels-first permutes; only the 3 multimask outputs are formed. The maths is the same as
transformers'; the results agree to float32 rounding (tests/test_sam_decoder.py).

Used for plain SAM (`SamMaskDecoder`, no attention similarity, no target embedding: what automatic
mask generation passes); SAM-HQ, SAM 2 and later families run their own decoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model) -> bool:
    """Whether `decode_points` reproduces this model's mask decoder (transformers' plain `SamMaskDecoder`)."""
    from transformers.models.sam.modeling_sam import SamMaskDecoder, SamTwoWayTransformer

    decoder = getattr(model, "mask_decoder", None)
    return (type(decoder) is SamMaskDecoder and type(decoder.transformer) is SamTwoWayTransformer
            and len(decoder.transformer.layers) >= 1 and decoder.transformer.layers[0].skip_first_layer_pe
            and not any(layer.skip_first_layer_pe for layer in decoder.transformer.layers[1:]))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., L, C) to (..., heads, L, C / heads)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, L, d) to (..., L, heads * d)."""
    return x.transpose(-3, -2).flatten(-2)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SamAttention on already projected q, k, v of shape (..., L, internal): output projection applied."""
    h = attn.num_attention_heads
    q, k, v = _heads(q, h), _heads(k, h), _heads(v, h)
    if q.dim() != k.dim() or q.shape[:-2] != k.shape[:-2]:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
    return attn.out_proj(_merge(out))


def _token_to_image_shared(attn, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Tokens (P, T, C) attending to one image's (N, C) keys / values: every prompt's rows in one batch."""
    p, t, _ = queries.shape
    q = attn.q_proj(queries).reshape(1, p * t, -1)
    out = _attend(attn, q, attn.k_proj(keys)[None], attn.v_proj(values)[None])
    return out.reshape(p, t, -1)


def _image_to_token(attn, image: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor) -> torch.Tensor:
    """Image queries, (N, C) shared or (P, N, C), attending to each prompt's T tokens (P, T, C): (P, N, C).

    With T a handful of tokens, SDPA and a last-dimension softmax over T run ~3x slower on CPU than
    scores laid out (P, heads, T, N): the softmax over T then runs along contiguous N.
    """
    h = attn.num_attention_heads
    q = _heads(attn.q_proj(image), h)  # (..., h, N, d)
    k, v = _heads(attn.k_proj(tokens_k), h), _heads(attn.v_proj(tokens_v), h)  # (P, h, T, d)
    # softmax in float32, as transformers' eager attention does (a no-op cast for float32 models)
    weights = torch.softmax((k @ q.transpose(-1, -2)) * attn.scaling, dim=-2, dtype=torch.float32).to(v.dtype)
    return attn.out_proj(_merge(weights.transpose(-1, -2) @ v))  # weights: (P, h, T, N)


def _self_or_cross(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return _attend(attn, attn.q_proj(query), attn.k_proj(key), attn.v_proj(value))


@torch.inference_mode()
def transformers_decode(model, embedding: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference `decode_points` reproduces: `SamModel.forward` on the same embedding and points.

    Returns multimask logits (P, 3, h, w) and IoUs (P, 3), for tests and scripts/benchmark_sam_decoder.py.
    """
    labels = torch.ones((1, points.shape[0], 1), dtype=torch.int64, device=points.device)
    out = model(image_embeddings=embedding[None], input_points=points[None, :, None, :], input_labels=labels,
                multimask_output=True)
    return out.pred_masks[0], out.iou_scores[0]


@torch.inference_mode()
def decode_points(model, embedding: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimask low-res logits (P, 3, h, w) and predicted IoUs (P, 3) of single foreground points.

    Args:
        model: a transformers `SamModel` for which `supports(model)` holds.
        embedding: the image embedding (C, H, W) from `get_image_embeddings`.
        points: (P, 2) point prompts (x, y) in input-frame pixels, as `SamModel.forward` takes them.

    Returns:
        What `SamModel(image_embeddings=embedding[None], input_points=points[None, :, None],
        multimask_output=True)` returns as `pred_masks[0]` and `iou_scores[0]`, to float rounding.
    """
    decoder = model.mask_decoder
    labels = torch.ones((1, points.shape[0], 1), dtype=torch.int64, device=points.device)
    sparse, dense = model.prompt_encoder(input_points=points[None, :, None, :], input_labels=labels,
                                         input_boxes=None, input_masks=None)
    c, height, width = embedding.shape
    p = points.shape[0]
    image_pe = model.get_image_wide_positional_embeddings()[0].flatten(1).T  # (N, C)
    keys = (embedding + dense[0]).flatten(1).T  # (N, C), the same for every prompt until block 0 writes to it
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    point_embeddings = torch.cat([output_tokens.expand(p, -1, -1), sparse[0].to(output_tokens.dtype)], dim=1)

    transformer = decoder.transformer
    queries = point_embeddings
    for index, layer in enumerate(transformer.layers):
        first = index == 0
        if first:  # skip_first_layer_pe: no positional term, no residual
            queries = _self_or_cross(layer.self_attn, queries, queries, queries)
        else:
            query = queries + point_embeddings
            queries = queries + _self_or_cross(layer.self_attn, query, query, queries)
        queries = layer.layer_norm1(queries)

        key = keys + image_pe  # (N, C) in block 0, (P, N, C) after
        query = queries + point_embeddings
        if first:
            attn_out = _token_to_image_shared(layer.cross_attn_token_to_image, query, key, keys)
        else:
            attn_out = _self_or_cross(layer.cross_attn_token_to_image, query, key, keys)
        queries = layer.layer_norm2(queries + attn_out)
        queries = layer.layer_norm3(queries + layer.mlp(queries))

        query = queries + point_embeddings
        attn_out = _image_to_token(layer.cross_attn_image_to_token, key, query, queries)
        keys = layer.layer_norm4(attn_out.add_(keys))  # in place: one (P, N, C) allocation fewer

    query = queries + point_embeddings
    key = keys + image_pe
    queries = queries + _self_or_cross(transformer.final_attn_token_to_image, query, key, keys)
    queries = transformer.layer_norm_final_attn(queries)
    if keys.dim() == 2:  # no blocks: still the shared image tokens
        keys = keys.expand(p, -1, -1)

    multimask = range(1, decoder.num_mask_tokens)
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in multimask], dim=2)
    iou = decoder.iou_prediction_head(queries[:, 0, :])[:, 1:]
    # The upscaled embedding is the largest tensor (16 N x C/8 per prompt); on CPU, in chunks of about
    # 2 MiB it stays in memory the allocator reuses instead of fresh pages for every prompt batch.
    chunk = max(1, _UPSCALE_CHUNK_BYTES // (16 * keys.shape[-2] * decoder.upscale_conv2.out_channels * keys.element_size()))
    if keys.device.type != "cpu":  # the page-reuse argument is the CPU allocator's; a GPU wants one big batch
        chunk = p
    masks = torch.cat([_upscale_and_predict(decoder, keys[i:i + chunk], hyper[i:i + chunk], height, width)
                       for i in range(0, p, chunk)])
    return masks, iou


_UPSCALE_CHUNK_BYTES = 2 << 20


def _activation_(activation, x: torch.Tensor) -> torch.Tensor:
    """The decoder's activation, in place for GELU (SAM's): the upscaled tensors are the largest."""
    if type(activation) is torch.nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=activation.approximate)
    return activation(x)


def _upscale_and_predict(decoder, keys: torch.Tensor, hyper: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Mask logits (P, M, 4H, 4W) from final image tokens (P, N, C) and hypernetwork outputs (P, C/8, M).

    ConvTranspose2d with kernel 2 and stride 2 is, per input pixel, a linear map to its 2x2 output
    pixels: here a matrix product on channels-last tokens, with the channels-first layer norm over
    the last dimension and no permutes until the (small) masks.
    """
    conv1, conv2, norm = decoder.upscale_conv1, decoder.upscale_conv2, decoder.upscale_layer_norm
    p, c = keys.shape[0], keys.shape[-1]
    c4, c8, m = conv1.out_channels, conv2.out_channels, hyper.shape[-1]
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4).T  # rows: (a, b, out channel)
    up = F.linear(keys, w1, conv1.bias.repeat(4)).unflatten(-1, (4, c4))  # (P, N, 4 [a, b], c4)
    up = _activation_(decoder.activation, F.layer_norm(up, (c4,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8).T
    up = _activation_(decoder.activation, F.linear(up, w2, conv2.bias.repeat(4)))  # (P, N, 4 [a, b], 4 [c, d] * c8)
    masks = (up.reshape(p, -1, c8) @ hyper).transpose(1, 2).contiguous()  # (P, M, N * 16): (i, j, a, b, c, d)
    # pixel (4i + 2a + c, 4j + 2b + d) of mask m, in copies of the small (M-channel) products whose runs are
    # 4 and 2 values long: on CPU faster than one 8-d permute of the M-last products
    masks = masks.view(p * m * height, width, 2, 2, 4).transpose(1, 2).contiguous()  # (P M i, a, j, b, [c d])
    masks = masks.view(p * m * height * 2, width, 2, 2, 2).permute(0, 3, 1, 2, 4)  # (P M i a, c, j, b, d)
    return masks.reshape(p, m, 4 * height, 4 * width)
