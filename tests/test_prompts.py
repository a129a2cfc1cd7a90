"""Prompt templates and the expert-knowledge dictionary (retvlp.prompts)."""

import copy
import json

import numpy as np
import pytest

from retvlp.prompts import (
    ExpertKnowledge,
    ExpertKnowledgeError,
    class_prompts,
    default_knowledge,
    join_labels,
    prompt_for_labels,
)
from retvlp.synthetic import SYNTHETIC_CLASSES

REQUIRED = [
    "normal",
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
    "diabetic macular edema",
    "glaucoma",
    "glaucoma suspect",
    "early age-related macular degeneration",
    "intermediate age-related macular degeneration",
    "neovascular age-related macular degeneration",
    "geographic atrophy",
    "cataract",
    "pathologic myopia",
    "central retinal vein occlusion",
    "branch retinal vein occlusion",
    "retinal artery occlusion",
    "hypertensive retinopathy",
    "retinitis pigmentosa",
    "epiretinal membrane",
    "macular hole",
    "central serous chorioretinopathy",
    "retinal detachment",
    "drusen",
    "optic disc edema",
    "optic atrophy",
    "choroidal neovascularization",
    "vitreous haemorrhage",
    "laser scars",
    "tessellated fundus",
    "media haze",
]


@pytest.fixture(scope="module")
def knowledge():
    return ExpertKnowledge.load()


def _minimal():
    return {
        "version": 1,
        "modalities": {"CFP": {"templates": ["A fundus photograph of {}."]}},
        "classes": {
            "glaucoma": {
                "aliases": ["GON"],
                "modalities": ["CFP"],
                "descriptions": ["a cupped disc", "a thin rim"],
            }
        },
    }


def _write(tmp_path, data, name="knowledge.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------- packaged file
def test_packaged_file_loads_and_validates(knowledge):
    assert knowledge.version == 1
    assert set(knowledge.templates) == {"CFP", "FFA", "OCT"}
    assert len(knowledge.classes) >= 30
    for modality, templates in knowledge.templates.items():
        assert len(templates) >= 2, modality
        for template in templates:
            assert template.count("{}") == 1 and "{" not in template.replace("{}", "")
    for name, entry in knowledge.classes.items():
        assert 2 <= len(entry.descriptions) <= 6, name
        assert len(set(entry.descriptions)) == len(entry.descriptions), name
        assert entry.modalities and set(entry.modalities) <= set(knowledge.templates), name
        for description in entry.descriptions:
            assert description == description.strip() and "," not in description, (name, description)
    assert default_knowledge() == knowledge


def test_required_and_synthetic_classes_present(knowledge):
    for name in (*REQUIRED, *SYNTHETIC_CLASSES):
        assert name in knowledge.classes, name
        assert knowledge.canonical(name) == name


def test_alias_lookup(knowledge):
    assert knowledge.canonical("no_DR") == "no diabetic retinopathy"
    assert knowledge.canonical("No DR") == "no diabetic retinopathy"
    assert knowledge.canonical("AMD") == "age-related macular degeneration"
    assert knowledge.canonical("  Age_Related   Macular-Degeneration ") == "age-related macular degeneration"
    assert knowledge.canonical("pdr") == "proliferative diabetic retinopathy"
    assert knowledge.canonical("NPDR") == "non-proliferative diabetic retinopathy"
    assert knowledge.canonical("DR") == "diabetic retinopathy"
    assert knowledge.canonical("vitreous hemorrhage") == "vitreous haemorrhage"
    assert knowledge.canonical("Diabetic Macular Oedema") == "diabetic macular edema"
    assert knowledge.canonical("GLAUCOMA") == "glaucoma"
    assert knowledge.canonical("not a disease") is None
    assert knowledge.descriptions("gon") == knowledge.classes["glaucoma"].descriptions
    assert knowledge.descriptions("not a disease") == ()


def test_templates_for(knowledge):
    assert knowledge.templates_for() == knowledge.templates["CFP"]
    assert knowledge.templates_for("oct") == knowledge.templates["OCT"]
    assert "A fundus photograph of {}." in knowledge.templates_for("CFP")
    with pytest.raises(ValueError, match="CFP.*FFA.*OCT"):
        knowledge.templates_for("MRI")
    assert "cataract" in knowledge.classes_for("CFP") and "cataract" not in knowledge.classes_for("OCT")


# ---------------------------------------------------------------- merging
def test_merged_overrides_and_extends(knowledge, tmp_path):
    merged = knowledge.merged(
        {
            "modalities": {
                "CFP": {"templates": ["Fundus: {}."]},
                "ICGA": {"templates": ["An ICG angiogram of {}."]},
            },
            "classes": {
                "GON": {"descriptions": ["a cupped disc", "a thin rim"]},
                "coats disease": {
                    "aliases": ["Coats"],
                    "descriptions": ["yellow subretinal exudation", "telangiectasia"],
                },
            },
        }
    )
    assert merged.templates_for("CFP") == ("Fundus: {}.",)
    assert merged.templates_for("ICGA") == ("An ICG angiogram of {}.",)
    assert merged.templates_for("OCT") == knowledge.templates_for("OCT")
    assert merged.descriptions("glaucoma") == ("a cupped disc", "a thin rim")
    assert merged.classes["glaucoma"].aliases == knowledge.classes["glaucoma"].aliases  # kept
    assert merged.canonical("coats") == "coats disease"
    assert set(merged.classes["coats disease"].modalities) == {"CFP", "FFA", "OCT", "ICGA"}
    # the original is untouched
    assert knowledge.descriptions("glaucoma") != ("a cupped disc", "a thin rim")
    assert knowledge.canonical("coats") is None
    # a JSON file and another ExpertKnowledge work too
    path = _write(tmp_path, {"classes": {"cataract": {"descriptions": ["cloudy lens", "dim image"]}}})
    assert knowledge.merged(path).descriptions("cataract") == ("cloudy lens", "dim image")
    other = ExpertKnowledge.from_dict(_minimal())
    assert knowledge.merged(other).descriptions("glaucoma") == ("a cupped disc", "a thin rim")
    # merged prompts use the new knowledge
    assert class_prompts("coats", knowledge=merged, modality="ICGA")[1] == (
        "An ICG angiogram of coats disease, yellow subretinal exudation."
    )


def test_merged_errors(knowledge):
    with pytest.raises(ExpertKnowledgeError, match=r"classes\['new'\].*descriptions"):
        knowledge.merged({"classes": {"new": {"aliases": ["x"]}}})
    with pytest.raises(ExpertKnowledgeError, match=r"AMD.*age-related macular degeneration"):
        knowledge.merged({"classes": {"new": {"aliases": ["AMD"], "descriptions": ["a", "b"]}}})


# ---------------------------------------------------------------- bad files
@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.pop("classes"), r"missing key 'classes'"),
        (lambda d: d.pop("version"), r"missing key 'version'"),
        (lambda d: d["modalities"]["CFP"].pop("templates"), r"modalities\['CFP'\]: missing key 'templates'"),
        (
            lambda d: d["classes"]["glaucoma"].pop("descriptions"),
            r"classes\['glaucoma'\]: missing key 'descriptions'",
        ),
        (
            lambda d: d["modalities"]["CFP"]["templates"].append("no slot"),
            r"modalities\['CFP'\]\.templates\[1\]",
        ),
        (lambda d: d["modalities"]["CFP"]["templates"].append("{} and {}"), r"exactly one"),
        (lambda d: d["modalities"]["CFP"]["templates"].append("{x} {}"), r"brace"),
        (
            lambda d: d["classes"].update(cupping={"aliases": ["gon"], "descriptions": ["a"]}),
            r"classes\['cupping'\]\.aliases.*'glaucoma'",
        ),
        (
            lambda d: d["classes"].update(Glaucoma={"descriptions": ["a"]}),
            r"classes\['Glaucoma'\]\.name.*'glaucoma'",
        ),
        (
            lambda d: d["classes"]["glaucoma"].update(modalities=["MRI"]),
            r"classes\['glaucoma'\]\.modalities.*MRI",
        ),
        (
            lambda d: d["classes"]["glaucoma"].update(descriptions="a thin rim"),
            r"classes\['glaucoma'\]\.descriptions",
        ),
        (lambda d: d.update(version=99), r"version"),
    ],
)
def test_bad_files_name_the_key(tmp_path, mutate, pattern):
    data = _minimal()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ExpertKnowledgeError, match=pattern) as info:
        ExpertKnowledge.load(path)
    assert str(path) in str(info.value)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ExpertKnowledgeError, match="broken.json"):
        ExpertKnowledge.load(path)


def test_user_file_roundtrip(tmp_path):
    loaded = ExpertKnowledge.load(_write(tmp_path, _minimal()))
    assert loaded.canonical("gon") == "glaucoma"
    assert loaded.classes["glaucoma"].descriptions == ("a cupped disc", "a thin rim")
    data = copy.deepcopy(_minimal())
    del data["classes"]["glaucoma"]["modalities"], data["classes"]["glaucoma"]["aliases"]
    assert ExpertKnowledge.from_dict(data).classes["glaucoma"].modalities == ("CFP",)


# ---------------------------------------------------------------- zero-shot prompts
def test_class_prompts(knowledge):
    templates = knowledge.templates_for("CFP")
    descriptions = knowledge.descriptions("glaucoma")
    prompts = class_prompts("glaucoma", knowledge=knowledge)
    assert len(prompts) == len(templates) * (1 + len(descriptions))
    assert prompts[0] == "A fundus photograph of glaucoma."
    assert f"A fundus photograph of glaucoma, {descriptions[0]}." in prompts
    for template in templates:
        for description in descriptions:
            assert template.replace("{}", f"glaucoma, {description}") in prompts
    plain = class_prompts("glaucoma", knowledge=knowledge, include_descriptions=False)
    assert plain == [t.replace("{}", "glaucoma") for t in templates]
    # aliases resolve to the canonical name; modality templates are used
    assert class_prompts("no_DR", knowledge=knowledge, include_descriptions=False)[0] == (
        "A fundus photograph of no diabetic retinopathy."
    )
    oct_prompts = class_prompts("DME", modality="OCT", knowledge=knowledge)
    assert oct_prompts[0] == "An OCT B-scan showing diabetic macular edema."
    # unknown class: raw name, templates only
    assert class_prompts("macular_telangiectasia", knowledge=knowledge) == [
        t.replace("{}", "macular telangiectasia") for t in templates
    ]
    with pytest.raises(ValueError, match="known modalities"):
        class_prompts("glaucoma", modality="MRI", knowledge=knowledge)


# ---------------------------------------------------------------- training prompts
def test_join_labels():
    assert join_labels(["a"]) == "a"
    assert join_labels(["a", "b"]) == "a and b"
    assert join_labels(["a", "b", "c"]) == "a, b and c"
    assert join_labels(["a, x", "b", "c"]) == "a, x; b and c"


def test_prompt_for_labels_deterministic(knowledge):
    labels = ["glaucoma", "cataract"]

    def draw(seed):
        rng = np.random.default_rng(seed)
        return [
            prompt_for_labels(labels, rng, augment_probability=0.5, knowledge=knowledge) for _ in range(20)
        ]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    # the template is drawn from the modality's templates
    rng = np.random.default_rng(0)
    seen = {prompt_for_labels(["glaucoma"], rng, knowledge=knowledge) for _ in range(200)}
    assert seen == {t.replace("{}", "glaucoma") for t in knowledge.templates_for("CFP")}


def test_prompt_for_labels_multi_label_and_template(knowledge):
    rng = np.random.default_rng(0)
    template = "A fundus photograph of {}."
    assert prompt_for_labels(["glaucoma"], rng, template=template) == "A fundus photograph of glaucoma."
    assert prompt_for_labels("glaucoma", rng, template=template) == "A fundus photograph of glaucoma."
    assert prompt_for_labels(["glaucoma", "AMD"], rng, template=template) == (
        "A fundus photograph of glaucoma and age-related macular degeneration."
    )
    assert prompt_for_labels(["glaucoma", "cataract", "drusen"], rng, template=template) == (
        "A fundus photograph of glaucoma, cataract and drusen."
    )
    assert (
        prompt_for_labels(["glaucoma", "GON"], rng, template=template) == "A fundus photograph of glaucoma."
    )
    oct_text = prompt_for_labels(["drusen"], rng, modality="OCT", knowledge=knowledge)
    assert oct_text in {t.replace("{}", "drusen") for t in knowledge.templates_for("OCT")}
    with pytest.raises(ValueError):
        prompt_for_labels(["glaucoma"], rng, template="no slot")


def test_augmentation_probability_extremes(knowledge):
    rng = np.random.default_rng(1)
    labels = ["glaucoma", "cataract"]
    all_descriptions = [d for label in labels for d in knowledge.descriptions(label)]
    for _ in range(100):
        text = prompt_for_labels(labels, rng, augment_probability=0.0, knowledge=knowledge)
        assert not any(d in text for d in all_descriptions)
        assert "glaucoma" in text and "cataract" in text
    for _ in range(100):
        text = prompt_for_labels(labels, rng, augment_probability=1.0, knowledge=knowledge)
        for label in labels:
            assert any(d in text for d in knowledge.descriptions(label)), text
    for mode, keeps_name in (("replace", False), ("extend", True)):
        for _ in range(20):
            text = prompt_for_labels(
                ["glaucoma"], rng, augment_probability=1.0, augment_mode=mode, knowledge=knowledge
            )
            assert ("glaucoma" in text) is keeps_name, text
            assert any(d in text for d in knowledge.descriptions("glaucoma"))
    both = {
        "glaucoma" in prompt_for_labels(["glaucoma"], rng, augment_probability=1.0, knowledge=knowledge)
        for _ in range(100)
    }
    assert both == {True, False}  # "random" mixes replace and extend


def test_augmentation_frequency(knowledge):
    rng = np.random.default_rng(2)
    descriptions = knowledge.descriptions("glaucoma")
    n, p = 4000, 0.3
    hits = sum(
        any(
            d in prompt_for_labels(["glaucoma"], rng, augment_probability=p, knowledge=knowledge)
            for d in descriptions
        )
        for _ in range(n)
    )
    assert abs(hits / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_unknown_class_and_errors(knowledge):
    rng = np.random.default_rng(0)
    text = prompt_for_labels(["macular_telangiectasia"], rng, augment_probability=1.0, template="X {}.")
    assert text == "X macular telangiectasia."
    text = prompt_for_labels(["Coats disease", "glaucoma"], rng, augment_probability=1.0, template="X {}.")
    assert text.startswith("X Coats disease")
    with pytest.raises(ValueError, match="at least one label"):
        prompt_for_labels([], rng)
    with pytest.raises(ValueError):
        prompt_for_labels([""], rng)
    with pytest.raises(ValueError, match="known modalities: CFP, FFA, OCT"):
        prompt_for_labels(["glaucoma"], rng, modality="MRI")
    with pytest.raises(ValueError, match="augment_probability"):
        prompt_for_labels(["glaucoma"], rng, augment_probability=1.5)
    with pytest.raises(ValueError, match="augment_mode"):
        prompt_for_labels(["glaucoma"], rng, augment_mode="swap")
