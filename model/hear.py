"""The HEAR benchmark API (hear.ai), so a study's encoders drop into audio evaluation suites.

    from model import hear
    m = hear.load_model("abl-out/best-masking-thin.pt")
    scene = hear.get_scene_embeddings(audio, m)        # (n_sounds, m.scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, m)  # (n_sounds, n, size), (n_sounds, n) ms

`audio` is a float tensor (n_sounds, n_samples) in [-1, 1] at `m.sample_rate`. Scene embeddings
are the EVAR pooling the probes use; timestamp embeddings are the per-time-patch vectors (the
frequency tokens of one time patch concatenated), stamped at the patch centre in milliseconds.
"""

from __future__ import annotations

import numpy as np
import torch

from model.embed import Encoder, load_encoder


class HearModel(torch.nn.Module):
    """A loaded encoder with the attributes the HEAR API asks for."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.vit = encoder.vit  # registered, so .to() and .parameters() work
        self.sample_rate = encoder.sample_rate
        self.scene_embedding_size = encoder.embedding_size
        self.timestamp_embedding_size = encoder.embedding_size


def load_model(model_file_path: str = "", which: str = "context") -> HearModel:
    """A checkpoint of a trial (abl-out/checkpoints/KEY.pt) or of `abl export-best`."""
    if not model_file_path:
        raise ValueError("abl's HEAR module needs a checkpoint path: load_model('best.pt')")
    return HearModel(load_encoder(model_file_path, which))


def _waves(audio: torch.Tensor) -> list:
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    return [a.detach().float().cpu().numpy() for a in audio]


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    return torch.from_numpy(model.encoder.scene(_waves(audio)))


def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    per = model.encoder.timestamps(_waves(audio))
    # Sounds of one call share a length, hence a patch count.
    emb = torch.from_numpy(np.stack([e for e, _ in per]))
    ts = torch.from_numpy(np.stack([t for _, t in per])).float()
    return emb, ts
