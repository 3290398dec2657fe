"""fgnb: a fine-grained ViT, taught step by step and measured.

The public API (listed in the README, "API at a glance"); everything else is private.
"""
from .attention import (
    attention_rollout,
    boxes_from_mask,
    cls_attention,
    cumulative_product,
    head_product,
    mean_threshold,
)
from .config import ConfigError, TrainConfig, load_config
from .crop import attention_boxes, attention_scores, crop_and_resize
from .data import CUBDataset, ImageFolderDataset, build_dataset, make_transform, torchvision_dataset
from .model import FGViT, FGViTOutput, create_model
from .pretrained import export_backbone
from .strategies import LastStrategy, ProgressiveStrategy, StepContext, SummedStrategy, make_strategy
from .checkpoints import load_model
from .evaluation import evaluate
from .synthetic import ensure_synthetic, generate
from .train import train

__version__ = "0.1.0"

__all__ = [
    "cls_attention", "head_product", "mean_threshold", "cumulative_product", "attention_rollout", "boxes_from_mask",
    "crop_and_resize", "attention_scores", "attention_boxes",
    "FGViT", "FGViTOutput", "create_model", "export_backbone",
    "LastStrategy", "SummedStrategy", "ProgressiveStrategy", "StepContext", "make_strategy",
    "TrainConfig", "ConfigError", "load_config", "train", "evaluate", "load_model",
    "generate", "ensure_synthetic", "CUBDataset", "ImageFolderDataset", "build_dataset", "make_transform",
    "torchvision_dataset",
]
