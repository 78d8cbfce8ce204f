"""Shared test fixtures: where the real images are, and models built for tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: real images bundled with the engine: one abdominal CT and one MR with TotalSegmentator labels
SAMPLES = REPO_ROOT / "DINSegmentation" / "dinseg" / "assets" / "sample"
SAMPLE_CT, SAMPLE_CT_LABELS = SAMPLES / "abdomen_ct.nii.gz", SAMPLES / "abdomen_ct_totalsegmentator_labels.nii.gz"
SAMPLE_MR, SAMPLE_MR_LABELS = SAMPLES / "abdomen_mr.nii.gz", SAMPLES / "abdomen_mr_totalsegmentator_labels.nii.gz"
#: a real multi-frame cardiac cine DICOM, no labels (Testing/data/README.md)
CINE_DICOM = REPO_ROOT / "Testing" / "data" / "cardiac_cine_dicom" / "MR-MONO2-8-16x-heart.dcm"
#: real expert-labelled data beside the clone (../shared/data, see its README); tests skip without it
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ACDC = SHARED_DATA / "acdc" / "training"


def acdc_patient(number: int) -> Path:
    """An ACDC patient folder, or a clean skip where the shared data is absent."""
    folder = ACDC / f"patient{number:03d}"
    if not folder.is_dir():
        pytest.skip(f"needs the ACDC data in {ACDC} (../shared/data beside the clone)")
    return folder


def shared_case(dataset: str, case_id: str):
    """(image path, label path) of a case in an nnU-Net-layout folder of ../shared/data
    (btcv_synapse, chaos_mr_t2), or a clean skip where the shared data is absent."""
    image = SHARED_DATA / dataset / "imagesTr" / f"{case_id}_0000.nii.gz"
    labels = SHARED_DATA / dataset / "labelsTr" / f"{case_id}.nii.gz"
    if not (image.is_file() and labels.is_file()):
        pytest.skip(f"needs {dataset} in {SHARED_DATA} (../shared/data beside the clone)")
    return image, labels


@pytest.fixture(scope="session")
def random_ct_model(tmp_path_factory) -> Path:
    """Card path of a light DIN CT model with fixed random weights: deterministic labels, no training.

    Good for tests of geometry, formats and plumbing, where the same input must give the same
    output; useless for accuracy.
    """
    import torch

    from dinseg.core.enhance import EnhanceConfig
    from dinseg.models import ModelCard, save_weights
    from dinseg.nets import NetConfig, build_network
    from dinseg.core.preprocess import Preprocessing
    from dinseg.core.terminology import SYNAPSE_ORGANS, label_infos_for

    folder = tmp_path_factory.mktemp("random_ct_model")
    torch.manual_seed(0)
    config = NetConfig.from_preset("light", num_classes=9)
    weights = save_weights(build_network(config).state_dict(), folder / "random-ct.pt")
    card = ModelCard(name="random-ct", version="0.0.1", task="plumbing tests only", modality="CT",
                     labels=label_infos_for(SYNAPSE_ORGANS),
                     preprocessing=Preprocessing(spacing=(3.0, 3.0), enhancement=EnhanceConfig(tiles=4)),
                     network=config, weights=weights)
    return card.save(folder / "random-ct.json")
