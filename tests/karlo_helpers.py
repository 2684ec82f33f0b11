"""A tiny random-init diffusers ``UnCLIPPipeline`` (Karlo's layout) built offline, for the
conversion tests. Every parameter is perturbed away from its initialisation (diffusers zeroes
several output layers), so equal outputs mean equal networks."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_LEN = 77
WIDTH = 32
WORDS = [
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "small",
    "big",
    "circle",
    "square",
    "star",
    "triangle",
    "on",
    "left",
    "right",
    "of",
    "and",
]


def tiny_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<unk>": 1, "<sot>": 2, "<eot>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<sot> $A <eot>", special_tokens=[("<sot>", 2), ("<eot>", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<sot>",
        eos_token="<eot>",
        model_max_length=TEXT_LEN,
    )


def _text_config(**kw):
    import transformers

    return transformers.CLIPTextConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TEXT_LEN,
        projection_dim=WIDTH,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        **kw,
    )


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def tiny_unclip_components(
    seed: int = 0, decoder_size: int = 32, super_res_size: int = 64, scale: float = 0.05
) -> dict:
    """The components of a tiny UnCLIPPipeline (diffusers' own unCLIP test sizes)."""
    import transformers
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(seed)
    text_encoder = transformers.CLIPTextModelWithProjection(_text_config()).eval()
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=WIDTH, num_layers=1)
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=WIDTH, time_embed_dim=4 * 32, cross_attention_dim=32)
    decoder = UNet2DConditionModel(
        sample_size=decoder_size,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )

    def super_res() -> torch.nn.Module:
        return UNet2DModel(
            sample_size=super_res_size,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
            resnet_time_scale_shift="scale_shift",
            in_channels=6,
            out_channels=3,
        )

    parts = {
        "prior": prior,
        "text_proj": text_proj,
        "decoder": decoder,
        "super_res_first": super_res(),
        "super_res_last": super_res(),
        "text_encoder": text_encoder,
    }
    for i, m in enumerate(parts.values()):
        perturb(m, seed * 100 + i, scale)
    with torch.no_grad():
        prior.clip_mean.normal_(0.0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
    return {
        **parts,
        "tokenizer": tiny_tokenizer(),
        "prior_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample_range=5.0,
        ),
        "decoder_scheduler": UnCLIPScheduler(
            variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000
        ),
        "super_res_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000
        ),
    }


def save_tiny_unclip(directory: Path, seed: int = 0):
    """Build, save (safetensors) and return a tiny diffusers UnCLIPPipeline."""
    from diffusers import UnCLIPPipeline

    pipe = UnCLIPPipeline(**tiny_unclip_components(seed))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return pipe


def float64_schedulers(pipe) -> None:
    """Give the pipeline's UnCLIPSchedulers float64 tables (the ADM-family arithmetic Karlo's own
    sampler and ours use). With diffusers' float32 tables the first step (t = 999) rounds the
    respaced beta to 1 and the posterior mean's x_t coefficient (1.1e-4) to 0."""
    from unclip.diffusion.schedules import get_betas

    for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        s = getattr(pipe, name)
        betas = torch.tensor(get_betas("cosine", s.config.num_train_timesteps), dtype=torch.float64)
        s.betas = betas
        s.alphas = 1.0 - betas
        s.alphas_cumprod = torch.cumprod(s.alphas, dim=0)
        s.one = torch.tensor(1.0, dtype=torch.float64)


def save_tiny_unclip_variation(directory: Path, seed: int = 1):
    """Build, save and return a tiny diffusers UnCLIPImageVariationPipeline (no prior, a CLIP
    image encoder), sharing the text-to-image pipeline's component sizes."""
    import transformers
    from diffusers import UnCLIPImageVariationPipeline

    parts = tiny_unclip_components(seed)
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=4,
        projection_dim=WIDTH,
    )
    image_encoder = perturb(transformers.CLIPVisionModelWithProjection(vision).eval(), seed * 100 + 50)
    extractor = transformers.CLIPImageProcessor(crop_size=32, size=32)
    pipe = UnCLIPImageVariationPipeline(
        decoder=parts["decoder"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        text_proj=parts["text_proj"],
        feature_extractor=extractor,
        image_encoder=image_encoder,
        super_res_first=parts["super_res_first"],
        super_res_last=parts["super_res_last"],
        decoder_scheduler=parts["decoder_scheduler"],
        super_res_scheduler=parts["super_res_scheduler"],
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return pipe
