"""megatiny.checkpoint: metadata, training-checkpoint files, conversion to/from Hugging Face.

    load_model(path) -> (GPT, metadata)        any checkpoint format megatiny reads
    export_hf(src, out)                          -> Hugging Face LlamaForCausalLM directory
    export_megatiny(src, out) / import_hf(hf, out) -> megatiny weights directory
    save_model(model, out)                       in-memory GPT -> megatiny weights directory

Training checkpoints: `layout` (what a directory is), `manager.CheckpointManager` (save, resume,
init_from), `metadata` (megatiny.json and its TrainState), `io` (latest, rotation, RNG files).
"""
from megatiny.checkpoint.convert import export_hf, export_megatiny, import_hf, save_model
from megatiny.checkpoint.load import load_model
from megatiny.checkpoint.sources import open_weights

__all__ = ["export_hf", "export_megatiny", "import_hf", "load_model", "open_weights", "save_model"]
