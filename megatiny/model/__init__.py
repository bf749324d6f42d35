"""megatiny.model: the Llama-architecture GPT, its configuration presets and generation."""
from megatiny.model.config import PRESETS, ModelConfig, ModelRuntime, get_preset
from megatiny.model.transformer import GPT

__all__ = ["GPT", "PRESETS", "ModelConfig", "ModelRuntime", "get_preset"]
