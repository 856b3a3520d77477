"""Original (CompVis / single-file) Stable Diffusion 1.x checkpoints <-> diffusers module state dicts.

An original SD 1.x checkpoint is one flat state dict with three prefixes:
- `model.diffusion_model.`      the UNet (input_blocks / middle_block / output_blocks, time_embed, out);
- `first_stage_model.`          the AutoencoderKL (encoder.down.N.block.M, mid.block_1, mid.attn_1, ...);
- `cond_stage_model.transformer.` the CLIP text model (`text_model.*`, the transformers names).

The key mapping is generated from the diffusers config (one rule per module kind), so it serves sd15 and
every small preset alike. The only tensor change is the VAE mid-block attention: 1x1 convolutions
[C, C, 1, 1] in the original, linear layers [C, C] in diffusers.

Loading is safe only: `.safetensors`, or `.ckpt`/`.pt` through torch.load(weights_only=True). Files we
write carry the lumenkit config (and tokenizer) as safetensors metadata or as string entries of the
.ckpt dict, so that our own single files load without any side information; real SD files fall back
to the `sd15` preset and a tokenizer folder given by the user.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from lumenkit.common.errors import LumenkitError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
CONFIG_KEY = "lumenkit_t2i_config"  # JSON of the preset-style config, in metadata / as a str entry
TOKENIZER_KEY = "lumenkit_t2i_tokenizer"  # JSON {filename: text} of the tokenizer folder

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# ----------------------------------------------------------------------------------------------
# key mapping (diffusers name -> original name), generated from the config


def _rename_head(key: str, table: dict[str, str]) -> str:
    """Replace the leading sub-module name of `key` (e.g. 'conv1.weight') by table[...] if listed."""
    for src in sorted(table, key=len, reverse=True):
        if key == src or key.startswith(src + "."):
            return table[src] + key[len(src):]
    return key


def _first_rule(key: str, rules: tuple, what: str) -> str:
    """The first (pattern, fn(match) -> original key) rule whose pattern matches `key` from its start."""
    for pattern, fn in rules:
        m = re.match(pattern, key)
        if m:
            return fn(m)
    raise LumenkitError(f"{what} key {key!r} has no SD 1.x equivalent (unsupported {what} configuration)")


_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_key_to_original(key: str, config: dict) -> str:
    """diffusers UNet2DConditionModel key -> SD 1.x `model.diffusion_model.` key (without the prefix).

    input_blocks.0 = conv_in; then per down block b, layer l: input_blocks.(1 + b(L+1) + l).{0: resnet,
    1: spatial transformer}, and the downsampler at input_blocks.(1 + b(L+1) + L).0.op; middle_block.0/1/2 =
    resnet/transformer/resnet; output_blocks.(b(L+2) + l) with L+1 layers per up block, the upsampler in
    the last layer after the resnet (and transformer, if any); L = layers_per_block.
    """
    lpb = int(config["layers_per_block"])

    def layer(kind: str, i: int, rest: str) -> str:  # resnet at .0 (renamed), spatial transformer at .1
        return f"{i}.0.{_rename_head(rest, _UNET_RESNET)}" if kind == "resnets" else f"{i}.1.{rest}"

    def upsampler(b: int) -> int:  # after the resnet (and the transformer of a cross-attention block)
        return 2 if "CrossAttn" in config["up_block_types"][b] else 1

    rules = (
        (r"(time_embedding\.linear_[12]|conv_in|conv_norm_out|conv_out)\.(.*)", lambda m: f"{_UNET_FIXED[m[1]]}.{m[2]}"),
        (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)",
         lambda m: "input_blocks." + layer(m[2], 1 + int(m[1]) * (lpb + 1) + int(m[3]), m[4])),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"input_blocks.{1 + int(m[1]) * (lpb + 1) + lpb}.0.op.{m[2]}"),
        (r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)",
         lambda m: f"middle_block.{2 * int(m[2])}.{_rename_head(m[3], _UNET_RESNET)}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)",
         lambda m: "output_blocks." + layer(m[2], int(m[1]) * (lpb + 1) + int(m[3]), m[4])),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
         lambda m: f"output_blocks.{int(m[1]) * (lpb + 1) + lpb}.{upsampler(int(m[1]))}.conv.{m[2]}"),
    )
    return _first_rule(key, rules, "UNet")


def vae_key_to_original(key: str, config: dict) -> str:
    """diffusers AutoencoderKL key -> SD 1.x `first_stage_model.` key (without the prefix).

    The decoder's up blocks are numbered in reverse in the original (up.(N-1-i)); the mid block is
    block_1 / attn_1 / block_2; conv_norm_out is norm_out; attention projections are q/k/v/proj_out.
    """
    n_up = len(config["up_block_types"])
    rules = (
        (r"(encoder|decoder)\.conv_norm_out\.(.*)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET)}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET)}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", lambda m: f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_head(m[3], _VAE_RESNET)}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", lambda m: f"{m[1]}.mid.attn_1.{_rename_head(m[2], _VAE_ATTN)}"),
        (r"(encoder|decoder)\.(conv_in|conv_out)\.|(post_)?quant_conv\.", lambda m: key),
    )
    return _first_rule(key, rules, "VAE")


def _is_vae_attn_matrix(original_key: str) -> bool:
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", original_key))


def text_key_to_original(key: str) -> str:
    """transformers CLIPTextModel key (with or without 'text_model.') -> key under cond_stage_model.transformer."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


# ----------------------------------------------------------------------------------------------
# whole state dicts


def diffusers_to_original(
    unet_sd: dict[str, torch.Tensor],
    vae_sd: dict[str, torch.Tensor],
    text_sd: dict[str, torch.Tensor],
    unet_config: dict,
    vae_config: dict,
) -> dict[str, torch.Tensor]:
    """Three diffusers/transformers state dicts -> one original SD 1.x state dict (prefixed keys).

    VAE attention weights [C, C] become 1x1 conv weights [C, C, 1, 1], as in CompVis' AttnBlock.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in unet_sd.items():
        out[UNET_PREFIX + unet_key_to_original(k, unet_config)] = v
    for k, v in vae_sd.items():
        ok = vae_key_to_original(k, vae_config)
        out[VAE_PREFIX + ok] = v[:, :, None, None] if _is_vae_attn_matrix(ok) and v.ndim == 2 else v
    for k, v in text_sd.items():
        out[TEXT_PREFIX + text_key_to_original(k)] = v
    return out


def _split_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ema_unet(sd: dict[str, torch.Tensor], unet_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The EMA copy of the UNet in a CompVis training checkpoint: `model_ema.diffusion_model<key without dots>`."""
    ema = {}
    for k in unet_sd:
        flat = "model_ema.diffusion_model" + k.replace(".", "")
        if flat not in sd:
            raise LumenkitError(f"checkpoint has model_ema weights but lacks {flat!r}; load without use_ema")
        ema[k] = sd[flat]
    return ema


def original_to_diffusers(
    sd: dict[str, torch.Tensor],
    unet_keys: dict[str, tuple[int, ...]],
    vae_keys: dict[str, tuple[int, ...]],
    text_keys: dict[str, tuple[int, ...]],
    unet_config: dict,
    vae_config: dict,
    *,
    name: str = "checkpoint",
    use_ema: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One original SD 1.x state dict -> (unet, vae, text) state dicts for the given diffusers modules.

    `*_keys` map each target module's state-dict key to its shape (from a model built from the config):
    every one must be found in `sd` with that shape, otherwise a LumenkitError names `name` and the key.
    Extra original keys (EMA copies, position_ids buffers, the loss's logvar) are ignored.
    """
    unet_src = _split_prefix(sd, UNET_PREFIX)
    if use_ema and any(k.startswith("model_ema.") for k in sd):
        unet_src = _ema_unet(sd, unet_src)
    vae_src = _split_prefix(sd, VAE_PREFIX)
    text_src = _split_prefix(sd, TEXT_PREFIX)

    def take(part, src, keys, to_orig, reshape=None):
        out, missing = {}, []
        for k, shape in keys.items():
            ok = to_orig(k)
            if ok not in src:
                missing.append(ok)
                continue
            v = src[ok]
            if reshape is not None:
                v = reshape(ok, v, shape)
            if tuple(v.shape) != tuple(shape):
                raise LumenkitError(
                    f"{name}: {part} weight {ok!r} has shape {tuple(v.shape)}, the model needs {tuple(shape)} "
                    "(the checkpoint is another architecture than the chosen preset/config)"
                )
            out[k] = v
        if missing:
            raise LumenkitError(
                f"{name}: {len(missing)} {part} weights missing, e.g. {missing[0]!r} (not an SD 1.x checkpoint of this architecture)"
            )
        return out

    def vae_reshape(ok, v, shape):
        return v.reshape(shape) if _is_vae_attn_matrix(ok) and v.ndim == 4 and len(shape) == 2 else v

    def text_to_orig(k):
        return text_key_to_original(k)

    unet = take("UNet (model.diffusion_model.)", unet_src, unet_keys, lambda k: unet_key_to_original(k, unet_config))
    vae = take("VAE (first_stage_model.)", vae_src, vae_keys, lambda k: vae_key_to_original(k, vae_config), vae_reshape)
    text = take("text encoder (cond_stage_model.transformer.)", text_src, text_keys, text_to_orig)
    return unet, vae, text


# ----------------------------------------------------------------------------------------------
# files


def check_sd_checkpoint(sd: dict[str, Any], name: str) -> None:
    """Raise a LumenkitError naming `name` unless `sd` has the three SD 1.x prefixes."""
    missing = [p for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX) if not any(isinstance(k, str) and k.startswith(p) for k in sd)]
    if missing:
        raise LumenkitError(
            f"{name}: not a Stable Diffusion 1.x checkpoint (no weights under {', '.join(repr(p) for p in missing)}); "
            "expected an original-layout SD 1.x .safetensors/.ckpt, or use --model DIR for a diffusers folder"
        )


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load an original-layout checkpoint safely -> (flat tensor state dict, string metadata).

    .safetensors: tensors + header metadata. .ckpt/.pt/.pth/.bin: torch.load(weights_only=True); a
    top-level "state_dict" is unwrapped (CompVis training checkpoints); string entries become metadata.
    """
    from lumenkit.common.fileio import load_state_dict, read_safetensors_metadata

    path = Path(path)
    if not path.is_file():
        raise LumenkitError(f"{path}: no such checkpoint file")
    if path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        raise LumenkitError(f"{path}: unknown checkpoint type {path.suffix!r} (want .safetensors or .ckpt)")
    if path.suffix != ".safetensors":
        with open(path, "rb") as f:
            head = f.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip archive (or a legacy pickle)
            raise LumenkitError(f"{path}: not a PyTorch checkpoint (neither the zip archive of torch.save nor a pickle)")
    try:
        raw = load_state_dict(path)
    except LumenkitError as exc:
        if path.suffix == ".safetensors":
            raise
        raise LumenkitError(
            f"{exc}; .ckpt files are read with weights_only=True and refused when they pickle Python objects "
            "other than tensors (e.g. training callbacks): use its .safetensors version"
        ) from None
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        meta = read_safetensors_metadata(path)
    if not isinstance(raw, dict):
        raise LumenkitError(f"{path}: not a Stable Diffusion checkpoint (top level is {type(raw).__name__}, want a dict)")
    for k in (CONFIG_KEY, TOKENIZER_KEY):
        if isinstance(raw.get(k), str):
            meta[k] = raw[k]
    if isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    sd = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    check_sd_checkpoint(sd, str(path))
    return sd, meta


def write_checkpoint(path: str | Path, sd: dict[str, torch.Tensor], config: dict | None = None, tokenizer_files: dict[str, str] | None = None) -> Path:
    """Write an original-layout checkpoint (.safetensors, or .ckpt as {"state_dict": ...} like CompVis).

    `config` (preset-style dict) and `tokenizer_files` ({filename: text}) are stored beside the
    tensors: safetensors metadata, or string entries of the .ckpt dict (loadable with weights_only=True).
    """
    from lumenkit.common.fileio import atomic_path, save_state_dict

    path = Path(path)
    meta = {}
    if config is not None:
        meta[CONFIG_KEY] = json.dumps(config)
    if tokenizer_files:
        meta[TOKENIZER_KEY] = json.dumps(tokenizer_files)
    if path.suffix == ".safetensors":
        return save_state_dict(path, sd, metadata=meta or None)
    if path.suffix not in (".ckpt", ".pt", ".pth"):
        raise LumenkitError(f"{path}: write .safetensors or .ckpt")
    tensors = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": tensors, **meta}, tmp)
    return path
