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


def test_finding_tokens_follow_the_grid_and_carry_each_findings_own_logit(tmp_path: Path) -> None:
    """One token per finding after the grid's: a prompt needs that many more placeholders, and a
    finding's token moves with its own logit only (the language model finds it by its identity)."""
    torch.manual_seed(3)
    model = LamedForCausalLM(readout_config(vision_finding_tokens=True)).eval()
    assert model.num_image_tokens == model.config.num_image_tokens == 4 + len(FINDINGS)
    readout = model.vision.findings
    assert readout.tokens is not None and not torch.allclose(readout.tokens.identity[0], readout.tokens.identity[1])
    logits = torch.full((1, 3, 4, 8, 8), -6.0)
    with torch.no_grad():
        quiet = readout.embed_tokens(logits)
        logits[0, 2, 1, 2, 3] = 6.0  # emphysema in one cell
        loud = readout.embed_tokens(logits)
        tokens = model.vision.project(torch.zeros(1, 32, 16), logits)
    assert tokens.shape == (1, 4 + 3, 16)
    torch.testing.assert_close(tokens[:, 4:], loud)
    torch.testing.assert_close(loud[0, :2], quiet[0, :2])
    assert float((loud[0, 2] - quiet[0, 2]).abs().max()) > 1e-3
    with torch.no_grad():
        readout.tokens.shift[2] = -12.0  # calibrated per finding: the same logit can read as absent
        assert float((readout.embed_tokens(logits)[0, 2] - quiet[0, 2]).abs().max()) < float(
            (loud[0, 2] - quiet[0, 2]).abs().max())
    model.save_pretrained(tmp_path)
    again = LamedForCausalLM.from_pretrained(tmp_path).eval()
    image = torch.rand((1, 1, 16, 64, 64))
    assert again.config.vision_finding_tokens
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(image), model.encode_images(image))


def test_finding_tokens_need_a_readout() -> None:
    with pytest.raises(ValueError, match="vision_finding_tokens"):
        readout_config(vision_finding_names=[], vision_finding_tokens=True)


def test_stage2_restarts_what_reads_the_tower_and_keeps_the_tower() -> None:
    """With `stage2_fresh` stage 2 is the same run whether stage 1 just trained the projector or
    the tower came from a saved model: what reads the tower starts from the seed alone."""
    from model.training.default.stage2 import restart_readers
    from model.training.default.steps import LabelHead

    runs = []
    for seed_before in (0, 1):
        torch.manual_seed(seed_before)  # a different history before stage 2
        model = LamedForCausalLM(readout_config(vision_finding_tokens=True))
        head = LabelHead(16, 3)
        if seed_before == 0:
            tower = {k: v.clone() for k, v in model.vision.vision_tower.state_dict().items()}
        else:
            model.vision.vision_tower.load_state_dict(tower)
        restart_readers(model, head, seed=7)
        runs.append((model, head))
    (a, head_a), (b, head_b) = runs
    for k, v in a.vision.state_dict().items():
        if not k.startswith(("vision_tower.", "findings.head.")):
            torch.testing.assert_close(v, b.vision.state_dict()[k], msg=k)
    for k, v in head_a.state_dict().items():
        torch.testing.assert_close(v, head_b.state_dict()[k], msg=k)
    torch.testing.assert_close(a.vision.vision_tower.state_dict(), b.vision.vision_tower.state_dict())


def test_calibration_rescales_each_findings_logits_and_saves(tmp_path: Path) -> None:
    """An identity until fitted; then each finding's logits through its own scale and shift, in
    the grid tokens (no extra placeholders), and not in what stage 1 reads."""
    torch.manual_seed(4)
    model = LamedForCausalLM(readout_config(vision_finding_calibrated=True)).eval()
    plain = LamedForCausalLM(readout_config()).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert model.num_image_tokens == plain.num_image_tokens == 4
    image = torch.rand((1, 1, 16, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(image), plain.encode_images(image))
        model.vision.findings.calibration.scale[1] = 5.0
        model.vision.findings.calibration.shift[1] = -2.0
        calibrated = model.encode_images(image)
        tokens, logits = model.vision.tower(image)
        assert not torch.allclose(calibrated, plain.encode_images(image))
        torch.testing.assert_close(model.vision.project(tokens, logits, stage2_parts=False), plain.encode_images(image))
        moved = logits.clone()
        moved[:, 1] = logits[:, 1] * 5.0 - 2.0
        torch.testing.assert_close(calibrated, plain.vision.project(tokens, moved))
    model.save_pretrained(tmp_path)
    again = LamedForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.vision_finding_calibrated
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(image), calibrated)
    with pytest.raises(ValueError, match="vision_finding_calibrated"):
        readout_config(vision_finding_names=[], vision_finding_calibrated=True)


def test_calibration_is_fitted_on_the_scans_labels() -> None:
    """A logistic regression per finding of the labels on each scan's readout maximum: a finding
    whose maximum separates the scans gets a steep positive scale, one with too few scans on a
    side keeps the identity."""
    from types import SimpleNamespace

    from model.nets.findings import Calibration
    from model.training.default.stage2 import fit_calibration

    generator = torch.Generator().manual_seed(5)
    present = torch.tensor([1.0] * 10 + [0.0] * 10)
    maxima = torch.stack((present * 1.0 + 0.1 * torch.randn(20, generator=generator),  # mid-range, separated
                          torch.randn(20, generator=generator),  # noise
                          torch.randn(20, generator=generator)), dim=1)
    logits = maxima[:, :, None, None, None].expand(20, 3, 2, 2, 2).clone()
    labels = torch.stack((present, present, torch.tensor([1.0] * 2 + [0.0] * 18)), dim=1)
    calibration = Calibration(3)
    fitted = fit_calibration(calibration, SimpleNamespace(findings=logits),
                             SimpleNamespace(labels=labels, label_names=FINDINGS))
    assert set(fitted) == {"Lung nodule", "Cardiomegaly"}
    probability = torch.sigmoid(calibration(maxima[:, :, None])[:, 0, 0])
    assert float(probability[:10].min()) > 0.7 and float(probability[10:].max()) < 0.3  # read apart
    assert abs(float(calibration.scale[1])) < abs(float(calibration.scale[0])) / 3
    assert float(calibration.scale[2]) == 1.0 and float(calibration.shift[2]) == 0.0
