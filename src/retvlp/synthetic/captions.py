"""Captions of the synthetic fundus images: varied English reports that describe only what was drawn.

:func:`write_caption` turns a :class:`~.findings.FundusFindings` record into one caption, with wording and
structure chosen by its generator. Most captions name the diagnosis (usually by its canonical class name);
about one in five captions of a diseased eye only describes the findings. A class registered without
vocabulary here is named by its label.
"""

from __future__ import annotations

import numpy as np

from .findings import NORMAL, FundusFindings, check_label

_DIAGNOSIS = {
    "diabetic retinopathy": (
        "diabetic retinopathy",
        "non-proliferative diabetic retinopathy",
        "diabetic retinopathy (DR)",
    ),
    "glaucoma": ("glaucoma", "glaucomatous optic neuropathy", "glaucoma with glaucomatous cupping"),
    "age-related macular degeneration": (
        "age-related macular degeneration",
        "age-related macular degeneration (AMD)",
        "dry age-related macular degeneration",
    ),
    "cataract": ("cataract", "lens opacity due to cataract", "cataract (media opacity)"),
    "pathologic myopia": ("pathologic myopia", "pathological myopia", "pathologic (high) myopia"),
}
_SEVERITY_WORDS = {
    "diabetic retinopathy": (("mild",), ("moderate",), ("severe",)),
    "glaucoma": (("early", "mild"), ("moderate",), ("advanced", "severe")),
    "age-related macular degeneration": (("early",), ("intermediate",), ("advanced", "late")),
    "cataract": (("mild",), ("moderate",), ("dense", "severe")),
    "pathologic myopia": (("mild",), ("moderate",), ("severe",)),
}
_DEFAULT_SEVERITY_WORDS = (("mild",), ("moderate",), ("severe",))  # classes without their own
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _severity_word(label: str, severity: float, rng: np.random.Generator) -> str:
    band = 0 if severity < 0.5 else 1 if severity < 0.75 else 2
    return _pick(rng, _SEVERITY_WORDS.get(label, _DEFAULT_SEVERITY_WORDS)[band])


def _count(n: int, singular: str, plural: str, rng: np.random.Generator) -> str:
    """A count phrase: exact number or a quantifier that agrees with ``n`` (> 0)."""
    if n == 1:
        return f"{_pick(rng, ('a single', 'one', 'an isolated'))} {singular}"
    if rng.random() < 0.35:
        number = _NUMBER_WORDS[n] if n <= 10 and rng.random() < 0.5 else str(n)
        return f"{number} {plural}"
    if n <= 4:
        words = ("a few", "a couple of") if n == 2 else ("a few",)
    elif n <= 12:
        words = ("several", "multiple", "scattered")
    else:
        words = ("numerous", "many", "multiple", "extensive")
    return f"{_pick(rng, words)} {plural}"


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.15:
        return "; ".join(parts)
    last = ", and " if len(parts) > 2 and rng.random() < 0.4 else " and "
    return ", ".join(parts[:-1]) + last + parts[-1]


# ---------------------------------------------------------------------------------------------- phrases
def _normal_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """A healthy disc, macula and vessels, in random order."""
    p = [
        _pick(
            rng,
            (
                "a healthy optic disc",
                "a normal optic disc with sharp margins",
                "a pink, well-defined optic disc",
                f"a healthy disc with a cup-to-disc ratio of {f.cup_to_disc_ratio:.1f}",
            ),
        )
    ]
    p.append(_pick(rng, ("a normal macula", "a healthy macula and fovea", "an unremarkable macula")))
    p.append(_pick(rng, ("normal retinal vessels", "vessels of normal calibre", "normal vascular arcades")))
    rng.shuffle(p)
    return p


def _retinopathy_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """Microaneurysms, haemorrhages, hard exudates and cotton wool spots."""
    p: list[str] = []
    if f.microaneurysms:
        p.append(
            _count(
                f.microaneurysms,
                _pick(rng, ("microaneurysm", "tiny red dot")),
                _pick(rng, ("microaneurysms", "tiny red dots", "red dot microaneurysms")),
                rng,
            )
        )
    if f.haemorrhages:
        kind = _pick(
            rng,
            (
                "haemorrhage",
                "hemorrhage",
                "dot-blot haemorrhage",
                "blot hemorrhage",
                "bleeding spot",
                "intraretinal haemorrhage",
            ),
        )
        p.append(_count(f.haemorrhages, kind, kind + "s", rng))
    if f.hard_exudates:
        kind = _pick(
            rng,
            (
                ("hard exudate", "hard exudates"),
                ("yellow exudate", "yellow exudates"),
                ("lipid deposit", "lipid deposits"),
            ),
        )
        where = _pick(rng, ("", " near the macula", " around the fovea", " in the posterior pole"))
        p.append(_count(f.hard_exudates, kind[0], kind[1], rng) + where)
    if f.cotton_wool_spots:
        kind = _pick(rng, ("cotton wool spot", "cotton-wool spot"))
        p.append(_count(f.cotton_wool_spots, kind, kind + "s", rng))
    return p


def _cupping_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """The enlarged cup and thin (pale) rim of glaucoma."""
    if f.label != "glaucoma":
        return []
    p = [
        _pick(
            rng,
            (
                f"a cup-to-disc ratio of {f.cup_to_disc_ratio:.1f}",
                f"a vertical cup-to-disc ratio of {f.cup_to_disc_ratio:.2f}",
                f"an enlarged optic cup (CDR {f.cup_to_disc_ratio:.1f})",
                f"a large cup with a ratio of {f.cup_to_disc_ratio:.1f}",
            ),
        )
    ]
    extra = ["thinning of the neuroretinal rim", "increased cupping of the optic disc", "a thin rim"]
    if f.rim_pallor > 0:
        extra += ["pallor of the neuroretinal rim", "a pale optic disc rim"]
    p.append(_pick(rng, extra))
    return p


def _drusen_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    if not f.drusen:
        return []
    size = (
        ("large confluent", "large soft", "confluent")
        if f.large_drusen
        else ("small", "medium-sized", "hard")
    )
    noun = _pick(rng, ("drusen", "yellow drusen", "drusen deposits"))
    where = _pick(
        rng, (" at the macula", " around the fovea", " in the macular region", " clustered at the macula")
    )
    return [_count(f.drusen, _pick(rng, size) + " druse", _pick(rng, size) + " " + noun, rng) + where]


def _haze_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    if not f.haze > 0:
        return []
    strength = "marked " if f.haze >= 0.65 else "mild " if f.haze < 0.45 else ""
    options = [
        f"a {strength}hazy view of the fundus",
        f"{strength}diffuse haze over the retina",
        f"{strength}media opacity",
        "poor visibility of the vessels through hazy media",
    ]
    blur = [
        "blurred retinal details",
        "reduced image contrast",
        "indistinct vessel margins",
        "a washed-out view",
    ]
    p = [_pick(rng, options)]
    if rng.random() < 0.6:
        p.append(_pick(rng, blur))
    return p


def _myopia_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """Tessellation, peripapillary atrophy and a tilted disc."""
    p: list[str] = []
    if f.tessellation > 0:
        p.append(
            _pick(
                rng,
                (
                    "a tessellated fundus",
                    "a tigroid fundus",
                    "prominent choroidal vessels",
                    "choroidal tessellation",
                ),
            )
        )
    if f.peripapillary_atrophy > 0:
        p.append(
            _pick(
                rng,
                (
                    "peripapillary atrophy",
                    "a temporal myopic crescent",
                    "a peripapillary atrophy crescent",
                    "temporal peripapillary atrophy",
                ),
            )
        )
    if f.disc_tilt > 0:
        p.append(_pick(rng, ("a tilted optic disc", "a small tilted disc", "an oblique, tilted disc")))
    return p


_PHRASES = (_retinopathy_phrases, _cupping_phrases, _drusen_phrases, _haze_phrases, _myopia_phrases)


def _finding_phrases(f: FundusFindings, rng: np.random.Generator) -> list[str]:
    """One phrase per finding that was actually drawn (normal anatomy for a normal eye), in random order."""
    if f.label == NORMAL:
        return _normal_phrases(f, rng)
    p = [phrase for describe in _PHRASES for phrase in describe(f, rng)]
    if not p:  # a registered class that records none of the findings above
        p = [f"changes of {f.label}"]
    order = rng.permutation(len(p))
    return [p[i] for i in order]


# ---------------------------------------------------------------------------------------------- captions
def _eye_words(f: FundusFindings, rng: np.random.Generator) -> tuple[str, str]:
    """How (and whether) the caption names the eye: ("of the left eye", "in the left eye"), "(OS)" or ""."""
    if rng.random() >= 0.5:
        return "", ""
    if rng.random() < 0.3:
        side = f" ({'OD' if f.eye == 'right' else 'OS'})"
        return side, side
    return f" of the {f.eye} eye", f" in the {f.eye} eye"


def _normal_caption(found: str, found_cap: str, of_eye: str, in_eye: str, photo: str, rng) -> str:
    template = int(rng.integers(6))
    if template == 0:
        return f"Normal fundus{of_eye}: {found}."
    if template == 1:
        return f"{photo} of a normal, healthy retina{in_eye} with {found}."
    if template == 2:
        return f"{found_cap}{in_eye}. Impression: normal fundus."
    if template == 3:
        return f"A fundus photograph of a normal eye{in_eye}, with {found}."
    if template == 4:
        return f"{photo}{of_eye} showing {found}, within normal limits."
    return f"Healthy retina{in_eye} with {found}; no disease is visible."


def _findings_only_caption(found: str, found_cap: str, of_eye: str, in_eye: str, photo: str, rng) -> str:
    template = int(rng.integers(3))
    if template == 0:
        return f"{photo}{of_eye} showing {found}."
    if template == 1:
        return f"{found_cap}{in_eye}."
    return f"Findings{of_eye}: {found}."


def _diagnosis_caption(
    f: FundusFindings, found: str, found_cap: str, of_eye: str, in_eye: str, photo: str, rng
) -> str:
    names = _DIAGNOSIS.get(f.label, (f.label,))
    diagnosis = names[0] if rng.random() < 0.7 else _pick(rng, names)
    if rng.random() < 0.6:
        diagnosis = f"{_severity_word(f.label, f.severity, rng)} {diagnosis}"
    diagnosis_cap = diagnosis[0].upper() + diagnosis[1:]
    template = int(rng.integers(6))
    if template == 0:
        return f"{photo}{of_eye} showing {found}, consistent with {diagnosis}."
    if template == 1:
        return f"{diagnosis_cap}{in_eye}: {found}."
    if template == 2:
        return f"{photo} of {diagnosis}{in_eye} with {found}."
    if template == 3:
        return f"{found_cap}{in_eye}. Impression: {diagnosis}."
    if template == 4:
        return f"{diagnosis_cap}. The fundus{of_eye} shows {found}."
    return f"A fundus photograph of {diagnosis}{in_eye}, with {found}."


def write_caption(findings: FundusFindings, rng: np.random.Generator) -> str:
    """One English caption describing only what was drawn, with rng-chosen wording and structure.

    Most captions name the diagnosis (usually by its canonical class name); about one in five captions of
    a diseased eye only describes the findings. Normal captions describe a healthy disc, macula and vessels.
    """
    f = findings
    check_label(f.label)
    phrases = _finding_phrases(f, rng)
    if f.label != NORMAL and len(phrases) > 3 and rng.random() < 0.3:  # sometimes a shorter report
        phrases = phrases[: int(rng.integers(2, len(phrases)))]
    found = _join(phrases, rng)
    found_cap = found[0].upper() + found[1:] if not found[0].isdigit() else f"Findings: {found}"
    of_eye, in_eye = _eye_words(f, rng)
    photo = _pick(
        rng, ("Fundus photograph", "Colour fundus photograph", "Color fundus image", "Retinal photograph")
    )
    if f.label == NORMAL:
        return _normal_caption(found, found_cap, of_eye, in_eye, photo, rng)
    if rng.random() < 0.2:  # findings only, no diagnosis
        return _findings_only_caption(found, found_cap, of_eye, in_eye, photo, rng)
    return _diagnosis_caption(f, found, found_cap, of_eye, in_eye, photo, rng)
