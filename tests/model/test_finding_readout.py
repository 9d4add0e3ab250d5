"""The finding readout (model/nets/findings.py): the stem's per-finding map reaches the language
model's image tokens where the finding is, survives save/load, and stage 2's cached tower outputs
give exactly the features of the model's own forward pass."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.nets.findings import FindingReadout
from model.nets.lamed import LamedConfig, LamedForCausalLM

TEXT = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2)
FINDINGS = ["Lung nodule", "Cardiomegaly", "Emphysema"]


def readout_config(**overrides) -> LamedConfig:
    settings = dict(text_config=TEXT, image_size=[16, 64, 64], patch_size=[8, 16, 16], mm_hidden_size=16,
                    vision_num_layers=1, vision_num_heads=2, vision_mlp_dim=32, vision_stem_channels=4,
                    vision_stem_depth=1, vision_finding_names=FINDINGS)
    return LamedConfig(**{**settings, **overrides})


def test_a_finding_in_one_cell_reaches_the_token_over_it() -> None:
    readout = FindingReadout(8, 3, feature_grid=(8, 16, 16), token_grid=(2, 4, 4), out_dim=3)
    with torch.no_grad():
        readout.local.weight.copy_(torch.eye(3))
        readout.local.bias.zero_()
        readout.whole.weight.zero_()
        readout.whole.bias.zero_()
    logits = torch.full((1, 3, 8, 16, 16), -20.0)
    logits[0, 1, 5, 3, 10] = 20.0  # cell (5, 3, 10) lies in token (1, 0, 2) of the 2x4x4 grid
    with torch.no_grad():
        tokens = readout.embed(logits)
        assert tokens.shape == (1, 32, 3)
        assert int(tokens[0, :, 1].argmax()) == 1 * 16 + 0 * 4 + 2
        assert float(tokens[0, :, 1].max()) == pytest.approx(1.0) and float(tokens[0, :, [0, 2]].max()) < 1e-6
        readout.whole.weight.copy_(torch.eye(3))
        everywhere = readout.embed(logits) - tokens  # the volume's maximum reaches every token
    torch.testing.assert_close(everywhere[0, :, 1], torch.ones(32))


def test_readout_changes_the_features_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LamedForCausalLM(readout_config()).eval()
    plain = LamedForCausalLM(readout_config(vision_finding_names=[])).eval()
    assert model.num_image_tokens == plain.num_image_tokens == 4  # no extra placeholders in prompts
    assert model.vision.findings is not None and plain.vision.findings is None
    image = torch.rand((2, 1, 16, 64, 64))
    with torch.no_grad():
        tokens, findings = model.vision.tower(image)
        assert findings.shape == (2, 3, 4, 8, 8)
        with_readout = model.encode_images(image)
        torch.testing.assert_close(with_readout, model.vision.project(tokens, findings))
        assert not torch.allclose(with_readout, model.vision.mm_projector(tokens))
    model.save_pretrained(tmp_path)
    again = LamedForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.vision_finding_names == FINDINGS
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(image), with_readout)


def test_stage2_cache_gives_the_models_own_features() -> None:
    from model.training.default.steps import TowerCache

    torch.manual_seed(1)
    model = LamedForCausalLM(readout_config()).eval()
    pixels = torch.rand((5, 1, 16, 64, 64)).half()
    cache = TowerCache(model, pixels, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(cache.features(model, [3, 1]), model.vision(pixels[[3, 1]].float()))
    assert model.vision.training  # stage 2 goes on training what reads the cache


@pytest.mark.parametrize("overrides", [dict(vision_stem_channels=0), dict(vision_family="omnict")],
                         ids=["no stem", "omnict"])
def test_readout_without_a_stem_is_refused(overrides: dict) -> None:
    with pytest.raises(ValueError, match="vision_finding_names"):
        readout_config(**overrides)


def test_a_lone_name_instead_of_a_list_is_refused() -> None:
    """A hand-edited config with one name as a string would otherwise become one finding per letter."""
    with pytest.raises(ValueError, match="list of finding names"):
        readout_config(vision_finding_names="Lung nodule")


def test_readout_auc_scores_each_scan_by_the_readouts_maximum() -> None:
    from sklearn.metrics import roc_auc_score

    from model.training.default.data import Dataset
    from model.training.default.stage1 import readout_auc

    torch.manual_seed(2)
    model = LamedForCausalLM(readout_config()).eval()
    pixels = torch.rand((8, 1, 16, 64, 64)).half()
    labels = torch.tensor([[v % 2, v // 4, 0] for v in range(8)], dtype=torch.float)  # Emphysema never present
    data = Dataset([f"v{v}" for v in range(8)], pixels, labels, FINDINGS, torch.zeros(8, 1, 3))
    auc = readout_auc(model, data)
    assert set(auc) == {"Lung nodule", "Cardiomegaly"}  # a finding absent everywhere has no AUC
    with torch.no_grad():
        maxima = model.vision.tower(pixels.float())[1].flatten(2).amax(-1)
    assert auc["Cardiomegaly"] == round(float(roc_auc_score(labels[:, 1], maxima[:, 1])), 3)
    assert readout_auc(LamedForCausalLM(readout_config(vision_finding_names=[])), data) == {}
