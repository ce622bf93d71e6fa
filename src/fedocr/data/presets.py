"""Synthetic organisations: each preset is a domain's text plus its image conditions.

They are non-IID the way real organisations are: a hospital's low-contrast scanned forms full
of drug names, a bank's stamped contracts and amounts, a school's Kaiti handwriting-like
homework, a logistics firm's blurred waybills. `public` mixes them all (the server's
validation set); `digits` is a small task for fast learning tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from fedocr.data import text, text_ui, text_wide
from fedocr.data.render import Conditions


@dataclass(frozen=True)
class Preset:
    name: str
    text: text.TextGenerator
    styles: dict[str, float]                    # font style -> weight
    conditions: Conditions = field(default_factory=Conditions)
    description: str = ""
    faces: str = "core"                         # "wide": every weight and the office faces (data.fonts)


# The fine-tuning corpora's drawing: every weight and office face, small and large, shaped runs.
WIDE_STYLES = {"sans": 0.45, "serif": 0.4, "kai": 0.15}
WIDE_CONDITIONS = Conditions(low_contrast=0.15, stamp=0.04, blur=0.35, motion_blur=0.05, noise=0.35, jpeg=0.45,
                             uneven_light=0.15, perspective=0.15, rules=0.25, stains=0.04, latin_font=0.7,
                             small_text=0.3, large_text=0.1, aliased=0.1, shaped_runs=True, ink_cut=0.5,
                             cell_rules=0.2)

PRESETS: dict[str, Preset] = {
    p.name: p for p in [
        Preset("hospital", text.hospital_line, {"sans": 0.5, "serif": 0.4, "kai": 0.1},
               Conditions(low_contrast=0.6, paper=(190, 250), ink=(40, 120), blur=0.35, noise=0.4, jpeg=0.4,
                          uneven_light=0.3, rules=0.2),
               "drug names, dosages, departments and patient-form fields on low-contrast scans"),
        Preset("bank", text.bank_line, {"sans": 0.4, "serif": 0.6},
               Conditions(stamp=0.35, noise=0.5, jpeg=0.4, rules=0.25, stains=0.1),
               "amounts, account numbers, dates and contract terms with stamps and noise"),
        Preset("school", text.school_line, {"kai": 0.8, "sans": 0.1, "serif": 0.1},
               Conditions(letter_spacing=(-0.02, 0.4), rotation_deg=3.0, perspective=0.3, rules=0.3, ink=(0, 110),
                          stains=0.1),
               "student names, subjects, scores and homework in handwriting-like Kaiti"),
        Preset("logistics", text.logistics_line, {"sans": 0.7, "serif": 0.2, "kai": 0.1},
               Conditions(blur=0.55, motion_blur=0.25, noise=0.4, jpeg=0.5, perspective=0.35, uneven_light=0.3),
               "waybill numbers, addresses and phone numbers, often blurred photos"),
        Preset("public", text.public_line, {"sans": 0.45, "serif": 0.35, "kai": 0.2},
               Conditions(low_contrast=0.2, stamp=0.08, blur=0.35, motion_blur=0.08, noise=0.4, jpeg=0.4,
                          uneven_light=0.2, perspective=0.2, rules=0.15, stains=0.06),
               "a mix of every domain and general text; the server validates on it"),
        Preset("general", text.general_line, {"sans": 0.45, "serif": 0.35, "kai": 0.2},
               Conditions(low_contrast=0.2, stamp=0.05, blur=0.35, motion_blur=0.08, noise=0.4, jpeg=0.4,
                          uneven_light=0.2, perspective=0.2, rules=0.15, stains=0.06),
               "everyday Chinese (jieba word frequencies), rare characters, English and numbers"),
        Preset("pretrain", text.pretrain_line, {"sans": 0.45, "serif": 0.35, "kai": 0.2},
               Conditions(low_contrast=0.2, stamp=0.06, blur=0.35, motion_blur=0.08, noise=0.4, jpeg=0.4,
                          uneven_light=0.2, perspective=0.2, rules=0.15, stains=0.06, ink_cut=0.5),
               "the base model's corpus: 60% general text, 40% the domain mix; half the lines cut "
               "to their ink as a text detector cuts them"),
        Preset("wide", text_wide.wide_line, dict(WIDE_STYLES), WIDE_CONDITIONS,
               "the base model's fine-tuning corpus: its own text plus real English words, identifiers, "
               "e-mail addresses and mixed lines, in every CJK weight and office face, small and large, "
               "shaped as browsers and word processors draw them", faces="wide"),
        Preset("ui", text_ui.ui_line, dict(WIDE_STYLES), WIDE_CONDITIONS,
               "software interface and message strings as translations print them: Latin terms, "
               "accelerator keys, options and placeholders in half- and full-width brackets inside "
               "Chinese and English; drawn as the wide corpus is", faces="wide"),
        Preset("digits", text.digits_and_dozen_hanzi, {"sans": 0.6, "serif": 0.4},
               Conditions(font_px=(28, 36), low_contrast=0.0, blur=0.1, noise=0.1, jpeg=0.0, rotation_deg=0.5,
                          perspective=0.0, rules=0.0, stains=0.0, uneven_light=0.0),
               "digits and a dozen hanzi: a small task for learning tests"),
    ]
}


class UnknownPreset(ValueError):
    pass


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPreset(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def with_device(preset: Preset, device: str, rate: float = 1.0) -> Preset:
    """The preset's documents with `rate` of them through an organisation's device (data.devices)."""
    return replace(preset, name=f"{preset.name}+{device}",
                   conditions=replace(preset.conditions, device=device, device_rate=rate),
                   description=f"{preset.description}; {rate:.0%} of lines from a {device} device")
