"""megatiny.data: tokenizers, indexed token files, packed GPT samples, blends and samplers."""
from megatiny.data.blended_dataset import BlendedDataset, StrideBlend, build_blending_indices
from megatiny.data.builder import build_gpt_datasets, describe_datasets
from megatiny.data.config import DataConfig, parse_blend, parse_split
from megatiny.data.gpt_dataset import GPTDataset
from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, IndexFormatError, best_dtype
from megatiny.data.sampler import PretrainingSampler
from megatiny.data.sidecar import DatasetSidecar, VocabMismatchError, check_data_vocab
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece

__all__ = [
    "BlendedDataset", "DataConfig", "DatasetSidecar", "GPTDataset", "IndexFormatError", "IndexedDataset",
    "IndexedDatasetBuilder", "StrideBlend", "VocabMismatchError", "check_data_vocab",
    "PretrainingSampler", "best_dtype", "build_blending_indices", "build_gpt_datasets", "describe_datasets",
    "load_tokenizer", "parse_blend", "parse_split", "train_sentencepiece",
]
