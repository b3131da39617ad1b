"""The embedding API on real audio: checkpoints load into encoders that embed files exactly as
the probes embed the same clips, and the HEAR-style module follows its convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import hear
from model.config import EncoderConfig, FrontendConfig, PredictorConfig, RecipeConfig, TrainConfig
from model.data.audio import load_audio
from model.data.features import CropSampler, corpus_normalizer, load_features
from model.embed import clip_embeddings, load_encoder
from model.errors import AblError
from model.probe import embed_clips
from model.train import train

RECIPE = RecipeConfig(
    frontend=FrontendConfig(frames=64),
    encoder=EncoderConfig(depth=1, width=32, heads=2),
    predictor=PredictorConfig(depth=1, width=16, heads=2),
    train=TrainConfig(steps=2, batch_size=4, warmup_steps=1),
)


@pytest.fixture(scope="module")
def trained(env_sfx, data_root, tmp_path_factory):
    """(checkpoint path, model, feature set of three test clips, normaliser)."""
    fs = load_features(env_sfx, env_sfx.split("train", 2), RECIPE.frontend, data_root)
    norm = corpus_normalizer([fs])
    ckpt = tmp_path_factory.mktemp("ckpt") / "trial.pt"
    model, _ = train(RECIPE, CropSampler([fs], 64, norm, seed=0), seed=0, checkpoint=ckpt)
    test = env_sfx.split("test", 1)[:3]
    return (
        ckpt,
        model,
        env_sfx,
        test,
        load_features(env_sfx, test, RECIPE.frontend, data_root),
        norm,
    )


@pytest.mark.parametrize("which", ["context", "target"])
def test_files_embed_as_the_probes_embed_the_same_clips(trained, which):
    ckpt, model, task, clips, fs, norm = trained
    enc = load_encoder(ckpt, which)
    assert enc.norm == norm and enc.recipe == RECIPE
    vit = model.encoder if which == "context" else model.target_encoder
    expected = embed_clips(vit, fs, norm, RECIPE.frontend.frames)
    waves = [load_audio(task.path(c), enc.sample_rate) for c in clips]
    got = enc.scene(waves)
    assert got.shape == (3, enc.embedding_size) == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_hear_module_on_real_audio(trained):
    ckpt, _, task, clips, _, _ = trained
    m = hear.load_model(str(ckpt))
    assert m.sample_rate == 16000
    assert m.scene_embedding_size == m.timestamp_embedding_size == 5 * 32
    n = 8000  # half a second of each clip (zero-padded if shorter): one 0.64 s input
    audio = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        w = torch.from_numpy(load_audio(task.path(c), 16000))[:n]
        audio[i, : len(w)] = w
    scene = hear.get_scene_embeddings(audio, m)
    emb, ts = hear.get_timestamp_embeddings(audio, m)
    assert scene.shape == (3, m.scene_embedding_size)
    assert emb.shape[0] == 3 and emb.shape[2] == m.timestamp_embedding_size
    assert ts.shape == emb.shape[:2]
    # Stamps at time-patch centres: 16 frames of 10 ms, the first at 80 ms.
    assert torch.allclose(ts[0, :2], torch.tensor([80.0, 240.0]))
    assert torch.all(ts[:, 1:] > ts[:, :-1])
    # Half a second fits one input: the scene embedding is the mean of the timestamp ones.
    assert torch.allclose(scene, emb.mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(audio[0], m)


def test_long_audio_is_chunked_and_averaged(trained):
    ckpt, _, task, clips, _, _ = trained
    enc = load_encoder(ckpt)
    frames = RECIPE.frontend.frames  # 64: one input, four time patches of 16
    wave = np.concatenate([load_audio(task.path(c), 16000) for c in clips] * 3)
    lm = enc.logmel(wave)
    # A length whose last chunk is short (two of its four patches hold audio), so an average
    # over chunks and an average over patches differ.
    n = (lm.shape[1] // frames - 1) * frames + 2 * 16
    assert n > 2 * frames
    wave = wave[: (n - 1) * RECIPE.frontend.hop]
    lm = enc.logmel(wave)
    assert lm.shape[1] == n
    ((emb, ts),) = enc.timestamps([wave])
    assert len(emb) == len(ts) == (n // frames) * 4 + 2  # every patch holding audio, no more
    assert np.all(np.diff(ts) > 0) and ts[-1] < n * 10
    # Each chunk alone (its log-mel columns), then the chunks averaged with equal weight.
    pieces = [lm[:, s : s + frames] for s in range(0, n, frames)]
    chunk_means = clip_embeddings(enc.vit, pieces, frames)
    assert chunk_means.shape == (len(pieces), enc.embedding_size)
    scene = enc.scene([wave])[0]
    np.testing.assert_allclose(scene, chunk_means.mean(0), rtol=1e-4, atol=1e-5)
    # The timestamp embeddings are the chunks' patches: grouped by chunk, the same average.
    chunk_of = ((ts / enc.hop_ms) // frames).astype(int)
    regrouped = np.stack([emb[chunk_of == i].mean(0) for i in range(len(pieces))])
    np.testing.assert_allclose(regrouped, chunk_means, rtol=1e-4, atol=1e-5)
    # Not the plain mean over patches: the short last chunk weighs as much as a full one.
    assert not np.allclose(scene, emb.mean(0), rtol=1e-4, atol=1e-5)


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AblError, match="not an abl checkpoint"):
        load_encoder(bad)
    with pytest.raises(AblError, match="no such checkpoint"):
        load_encoder(tmp_path / "missing.pt")
