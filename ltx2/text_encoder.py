"""Configurators for the Gemma-3 text path, sized from the Gemma folder instead of hard-coded.

ltx-core builds the text encoder and the feature extractor from a hard-coded Gemma-3-12B config
(`GEMMA3_CONFIG_FOR_LTX`). These configurators build exactly the same ltx-core classes
(`GemmaTextEncoder` around a transformers `Gemma3ForConditionalGeneration`, `FeatureExtractorV1/V2`,
`Embeddings1DConnector`, `EmbeddingsProcessor`) with sizes read from the folder's `config.json`, so the
real 12B folder gives the official modules and a tiny folder gives tiny ones.
"""

from __future__ import annotations

import functools

import torch
from ltx_core.model.model_protocol import ModelConfigurator
from ltx_core.text_encoders.gemma import EmbeddingsProcessor, GemmaTextEncoder
from ltx_core.text_encoders.gemma.embeddings_connector import (
    AudioEmbeddings1DConnectorConfigurator,
    Embeddings1DConnectorConfigurator,
)
from ltx_core.text_encoders.gemma.encoders.encoder_configurator import _V2_EXPECTED_CONFIG
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2


def gemma_text_encoder_configurator(gemma_config: dict) -> type[ModelConfigurator[GemmaTextEncoder]]:
    """A configurator building the Gemma-3 encoder described by `gemma_config` on the meta device."""

    class GemmaFolderTextEncoderConfigurator(ModelConfigurator[GemmaTextEncoder]):
        @classmethod
        def from_config(cls, config: dict) -> GemmaTextEncoder:  # sized by the folder, not the checkpoint
            from transformers import Gemma3Config, Gemma3ForConditionalGeneration

            with torch.device("meta"):
                model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(dict(gemma_config)))
            return GemmaTextEncoder(model=model)

    return GemmaFolderTextEncoderConfigurator


@functools.cache
def embeddings_processor_configurator(
    hidden_size: int, num_hidden_layers: int
) -> type[ModelConfigurator[EmbeddingsProcessor]]:
    """A configurator for ltx-core's `EmbeddingsProcessor` whose feature extractor fits a Gemma of this size
    (one class per size, so the header check's memo of built layouts recognises it)."""

    class SizedEmbeddingsProcessorConfigurator(ModelConfigurator[EmbeddingsProcessor]):
        @classmethod
        def from_config(cls, config: dict) -> EmbeddingsProcessor:
            return EmbeddingsProcessor(
                video_connector=Embeddings1DConnectorConfigurator.from_config(config),
                audio_connector=AudioEmbeddings1DConnectorConfigurator.from_config(config),
                feature_extractor=_feature_extractor(config.get("transformer", {}), hidden_size, num_hidden_layers),
            )

    return SizedEmbeddingsProcessorConfigurator


def _feature_extractor(transformer_config: dict, hidden_size: int, num_hidden_layers: int) -> torch.nn.Module:
    """ltx-core's V1/V2 selection (`_create_feature_extractor`), with the Gemma width and depth as inputs."""
    flat_dim = hidden_size * (num_hidden_layers + 1)  # +1: the embedding layer's output
    overlapping = transformer_config.keys() & _V2_EXPECTED_CONFIG.keys()
    if not overlapping:
        return FeatureExtractorV1(aggregate_embed=torch.nn.Linear(flat_dim, hidden_size, bias=False), is_av=True)
    if overlapping != _V2_EXPECTED_CONFIG.keys() or any(
        transformer_config[k] != _V2_EXPECTED_CONFIG[k] for k in overlapping
    ):
        found = {k: transformer_config[k] for k in overlapping}
        raise NotImplementedError(f"unknown text-projection config: {found}")
    video_dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    audio_dim = transformer_config["audio_num_attention_heads"] * transformer_config["audio_attention_head_dim"]
    return FeatureExtractorV2(
        video_aggregate_embed=torch.nn.Linear(flat_dim, video_dim, bias=True),
        embedding_dim=hidden_size,
        audio_aggregate_embed=torch.nn.Linear(flat_dim, audio_dim, bias=True),
    )
