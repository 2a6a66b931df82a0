"""Every registry entry, tiny recipe: builds, trains a step, respects presence and padding."""
from __future__ import annotations

import pytest
import torch

from zoo import build_model, get_entry, list_entries, spec

ENTRIES = list_entries()
SOFTMAX_SCORE_BIASES = {"mil.attn_w.bias", "fusion_head.fusion.score.2.bias"}


def presence_columns(model) -> list[int]:
    return [spec.MODALITIES.index(m) for m in model.modalities]


def check_outputs(model, logits, aux, batch):
    b = batch[spec.KEY_LABEL].shape[0]
    assert logits.shape == (b, spec.NUM_CLASSES)
    assert torch.isfinite(logits).all()
    fusion = aux[spec.AUX_FUSION_ATTENTION]
    assert fusion.shape == (b, len(model.modalities))
    assert torch.isfinite(fusion).all()
    assert set(aux[spec.AUX_EMBEDDINGS]) == set(model.modalities)
    presence = batch[spec.KEY_PRESENCE][:, presence_columns(model)]
    some = presence.any(1)
    assert (fusion[some][~presence[some]] == 0).all(), "a missing modality got fusion attention"
    if model.fusion_head.fusion_type != "gated":  # rows with nothing present: uniform
        assert torch.allclose(fusion[~some], torch.full_like(fusion[~some], 1 / len(model.modalities)))
    if model.fusion_head.fusion_type == "gated":
        assert ((fusion >= 0) & (fusion <= 1)).all()
    else:
        assert torch.allclose(fusion.sum(1), torch.ones(b), atol=1e-5)
    if "pathology" in model.modalities:
        attention = aux[spec.AUX_PATHOLOGY_ATTENTION]
        mask = batch[spec.KEY_PATHOLOGY_MASK]
        assert attention.shape == mask.shape
        assert (attention[~mask] == 0).all()
        assert torch.allclose(attention.sum(1), torch.ones(len(mask)), atol=1e-5)


def test_registry_covers_every_fusion_and_subset():
    assert len(ENTRIES) == 6 * 4 + 4
    for fusion in ("concatenate", "gated", "attention", "cross_attention", "bilinear", "late"):
        assert {fusion, f"{fusion}-path_mri", f"{fusion}-path_clin", f"{fusion}-mri_clin"} <= set(ENTRIES)
    assert {"pathology_only", "mri_only", "clinical_only", "clinical_norec_only"} <= set(ENTRIES)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_builds_trains_and_handles_missing(name, batch_factory):
    torch.manual_seed(0)
    entry = get_entry(name)
    config = entry.config("tiny")
    model = build_model(name, recipe="tiny")
    assert model.modalities == entry.modalities
    assert list(config["model"]["modalities"]) == list(entry.modalities)

    # Full batch, padded bags: forward + backward reaches every trainable parameter of the used parts.
    model.train()
    batch = batch_factory(config)
    logits, aux = model(batch)
    check_outputs(model, logits, aux, batch)
    torch.nn.functional.cross_entropy(logits, batch[spec.KEY_LABEL]).backward()
    dead = {n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)}
    # Exempt: the learned missing-modality tokens (they stand in only for an absent or dropped modality) and the bias
    # of a score that goes straight into a softmax (softmax is shift-invariant, so that gradient is zero).
    assert {n for n in dead if not n.endswith("missing_tokens")} <= SOFTMAX_SCORE_BIASES, dead

    model.eval()
    with torch.no_grad():
        # Random missing modalities (at least one present per row).
        g = torch.Generator().manual_seed(1)
        presence = torch.rand(3, 3, generator=g) > 0.5
        presence[torch.arange(3), torch.randint(0, 3, (3,), generator=g)] = True
        batch[spec.KEY_PRESENCE] = presence
        logits, aux = model(batch)
        check_outputs(model, logits, aux, batch)

        # All but one modality missing: only that modality gets weight.
        for keep in entry.modalities:
            one = torch.zeros(3, 3, dtype=torch.bool)
            one[:, spec.MODALITIES.index(keep)] = True
            batch[spec.KEY_PRESENCE] = one
            logits, aux = model(batch)
            check_outputs(model, logits, aux, batch)
            if model.fusion_head.fusion_type != "gated":
                assert torch.allclose(aux[spec.AUX_FUSION_ATTENTION][:, entry.modalities.index(keep)], torch.ones(3))

        # Everything missing: defined and finite.
        batch[spec.KEY_PRESENCE] = torch.zeros(3, 3, dtype=torch.bool)
        logits, aux = model(batch)
        assert torch.isfinite(logits).all() and torch.isfinite(aux[spec.AUX_FUSION_ATTENTION]).all()


@pytest.mark.parametrize("name, missing", [(n, m) for n in ENTRIES for m in get_entry(n).modalities])
def test_missing_modality_contributes_nothing(name, missing, batch_factory):
    """Changing the inputs of a modality marked missing leaves the prediction unchanged (every entry, each of its
    modalities; a single-modality entry with its one modality missing gives its constant prior)."""
    torch.manual_seed(0)
    model = build_model(name, recipe="tiny").eval()
    config = get_entry(name).config("tiny")
    batch = batch_factory(config)
    batch[spec.KEY_PRESENCE][:, spec.MODALITIES.index(missing)] = False
    altered = dict(batch)
    key = {"pathology": spec.KEY_PATHOLOGY, "mri": spec.KEY_MRI, "clinical": spec.KEY_CLINICAL}[missing]
    altered[key] = batch[key] * 0 + (batch[key].max() if batch[key].dtype == torch.uint8 else 7.0)
    with torch.no_grad():
        before, _ = model(batch)
        after, _ = model(altered)
        present = {k: v.clone() if k == spec.KEY_PRESENCE else v for k, v in batch.items()}
        present[spec.KEY_PRESENCE][:] = True
        altered_present = {**altered, spec.KEY_PRESENCE: present[spec.KEY_PRESENCE]}
        changed = not torch.allclose(model(present)[0], model(altered_present)[0], atol=1e-6)
    assert torch.allclose(before, after, atol=1e-6)
    assert changed, "the alteration does not move a prediction even with the modality present: the check is void"


def test_seed_style_batch_without_presence_or_mask(batch_factory):
    """The seed calls model({'pathology': x, 'mri': y}): absent keys are missing modalities."""
    model = build_model("attention", recipe="tiny").eval()
    batch = batch_factory(get_entry("attention").config("tiny"))
    with torch.no_grad():
        logits, aux = model({spec.KEY_PATHOLOGY: batch[spec.KEY_PATHOLOGY], spec.KEY_MRI: batch[spec.KEY_MRI]})
    assert logits.shape == (3, spec.NUM_CLASSES)
    assert torch.allclose(aux[spec.AUX_FUSION_ATTENTION][:, 2], torch.zeros(3))
    assert aux[spec.AUX_PATHOLOGY_ATTENTION].shape == batch[spec.KEY_PATHOLOGY_MASK].shape


def test_cached_features_match_patch_encoder(batch_factory):
    model = build_model("attention-path_clin", recipe="tiny").eval()
    batch = batch_factory(get_entry("attention-path_clin").config("tiny"))
    with torch.no_grad():
        patches = batch[spec.KEY_PATHOLOGY]
        features = model.patch_encoder(patches.flatten(0, 1)).view(*patches.shape[:2], -1)
        direct, _ = model(batch)
        cached = {k: v for k, v in batch.items() if k != spec.KEY_PATHOLOGY}
        cached[spec.KEY_PATHOLOGY_FEATURES] = features
        from_features, _ = model(cached)
    assert torch.allclose(direct, from_features, atol=1e-5)


def test_modality_dropout_never_drops_all_present():
    from zoo.models.fusion import drop_modalities

    torch.manual_seed(0)
    presence = torch.rand(500, 3) > 0.4
    presence[0] = False  # a row with nothing present stays empty
    dropped = drop_modalities(presence, 0.9)
    assert not (dropped & ~presence).any()
    assert (dropped.any(1) == presence.any(1)).all()
    assert dropped.sum() < presence.sum()
