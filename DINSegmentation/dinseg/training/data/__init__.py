"""Dataset readers (ACDC, Synapse, BTCV, MSD / nnU-Net) and train/val/test splits."""

from .datasets import (BTCV_TO_SYNAPSE, LAYOUTS, SPLIT_NAMES, CaseRecord, Dataset, check_labels, detect_layout,
                       load_split_file, open_dataset, split_cases, validate)

__all__ = ["BTCV_TO_SYNAPSE", "LAYOUTS", "SPLIT_NAMES", "CaseRecord", "Dataset", "check_labels", "detect_layout",
           "load_split_file", "open_dataset", "split_cases", "validate"]
