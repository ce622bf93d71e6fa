"""Organisation devices: the private look of each organisation's documents (data.devices)."""
from pathlib import Path

import numpy as np
import pytest

from fedocr.data import PRESETS, InMemoryLines, SyntheticLines
from fedocr.data.devices import DEVICES
from fedocr.data.fonts import installed_faces
from fedocr.data.presets import with_device
from fedocr.data.render import Conditions, render_line
from fedocr.data.organisations import DEVICE_RATE, ORG_DEVICES, get_federation

BASE_MODEL = Path(__file__).resolve().parents[1] / "models" / "base.pt"


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_each_device_changes_the_line_but_keeps_its_ink_and_shape(name):
    clean = render_line("金额：¥598.00 医院", installed_faces()[0], np.random.default_rng(3), Conditions())
    marked = DEVICES[name].apply(clean, np.random.default_rng(4))
    again = DEVICES[name].apply(clean, np.random.default_rng(4))
    assert marked.shape == clean.shape and marked.dtype == np.uint8
    assert np.array_equal(marked, again)                                  # a pure function of its RNG
    assert np.abs(marked.astype(int) - clean.astype(int)).mean() > 1.0   # it did mark the line
    ink_columns = lambda img: (img < img.max() - 60).any(axis=0).mean()  # noqa: E731
    assert ink_columns(marked) > 0.5 * ink_columns(clean)                # and the text is still there


def test_an_unknown_device_or_rate_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'laser'.*dot-matrix"):
        Conditions(device="laser")
    for rate, device in ((1.5, "fax"), (float("nan"), "fax"), (0.5, "")):
        with pytest.raises(ValueError, match="device rate"):
            Conditions(device=device, device_rate=rate)


@pytest.mark.parametrize("org", ["hospital", "bank"])
def test_fax_keeps_low_contrast_and_unevenly_lit_lines_readable(org):
    """A fax threshold must follow the line's own paper level, or shadowed scans turn black."""
    lines = SyntheticLines(with_device(PRESETS[org], "fax"), 40, seed=2)
    ink = [float((lines[i][0] < 128).mean()) for i in range(40)]
    assert max(ink) < 0.4 and min(ink) > 0.01, (min(ink), max(ink))


def test_a_device_changes_the_data_fingerprint(small_charset):
    from fedocr.data import EncodedLines

    plain = EncodedLines(SyntheticLines("digits", 8, seed=1, charset=small_charset), small_charset).fingerprint
    faxed = EncodedLines(SyntheticLines(with_device(PRESETS["digits"], "fax"), 8, seed=1, charset=small_charset),
                         small_charset).fingerprint
    assert plain != faxed


def test_a_federation_organisation_is_its_domain_plus_its_device():
    fed = get_federation("three-orgs")
    hospital = fed.preset("hospital")
    assert hospital.conditions.device == ORG_DEVICES["hospital"] and hospital.text is PRESETS["hospital"].text
    with_device = SyntheticLines(hospital, 24, seed=5)
    domain_only = SyntheticLines("hospital", 24, seed=5)
    same = [np.array_equal(with_device[i][0], domain_only[i][0]) for i in range(24)]
    # Lines that did not go through the device are exactly the domain preset's lines.
    assert 0 < sum(same) < 24 and abs((24 - sum(same)) / 24 - DEVICE_RATE) < 0.3
    assert [with_device[i][1] for i in range(24)] == [domain_only[i][1] for i in range(24)]
    assert get_federation("three-orgs-mini").preset("hospital").conditions.device == ""


@pytest.mark.slow
@pytest.mark.skipif(not BASE_MODEL.is_file(), reason="needs the shipped base model")
def test_the_base_model_reads_device_lines_worse_but_they_stay_legible():
    """The premise of the federation presets: the public model has not seen the devices."""
    from fedocr.model import load_checkpoint, torch_logits_fn
    from fedocr.train.evaluate import evaluate

    checkpoint = load_checkpoint(BASE_MODEL)
    logits = torch_logits_fn(checkpoint.model.float())
    for org in ("hospital", "bank", "school"):
        always = with_device(PRESETS[org], ORG_DEVICES[org])
        plain = evaluate(logits, checkpoint.charset, InMemoryLines(SyntheticLines(org, 40, seed=9))).cer
        device = evaluate(logits, checkpoint.charset, InMemoryLines(SyntheticLines(always, 40, seed=9))).cer
        assert device > plain + 0.03, (org, plain, device)
        assert device < 0.6, (org, device)
