"""Prompt templates and the expert-knowledge dictionary: class labels become text.

Two consumers share this module:

* **KeepFIT V2 pretraining** turns the categorical label(s) of an image into a training sentence with
  :func:`prompt_for_labels`, a modality-specific template such as ``"A fundus photograph of {}."`` filled
  with the labels, optionally with *label augmentation* (a label is replaced by, or extended with, one of
  its expert descriptions);
* **zero-shot evaluation** of both model families builds a class prototype from the prompt ensemble of
  :func:`class_prompts` (every template x the class name and the class name with each description; the
  caller averages the text embeddings).

The knowledge itself is data: ``retvlp/data/expert_knowledge.json`` (versioned), loaded by
:meth:`ExpertKnowledge.load`. Its layout::

    {"version": 1,
     "modalities": {"CFP": {"templates": ["A fundus photograph of {}.", ...]}, "FFA": ..., "OCT": ...},
     "classes": {"glaucoma": {"aliases": ["GON", ...], "modalities": ["CFP", "OCT"],
                              "descriptions": ["a thinned neuroretinal rim", ...]}, ...}}

Every template holds exactly one ``{}`` (and no other brace); each class needs ``descriptions`` (a list of
short phrases naming its visible signs), ``aliases`` and ``modalities`` are optional (default: none / every
modality). Names and aliases are matched case-, whitespace-, underscore- and hyphen-insensitively and must
not collide across classes. Users extend or override the packaged dictionary with
:meth:`ExpertKnowledge.merged` (a dict, a JSON file or another :class:`ExpertKnowledge`).

Text of a label: the canonical class name when the label is known (``"no_DR"`` becomes
``"no diabetic retinopathy"``, ``"AMD"`` becomes ``"age-related macular degeneration"``), otherwise the raw
label with underscores turned into spaces and whitespace collapsed. A label and one of its descriptions
are combined as ``"<class name>, <description>"`` both in training prompts and in zero-shot prompts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_VERSIONS",
    "ClassKnowledge",
    "ExpertKnowledge",
    "ExpertKnowledgeError",
    "class_prompts",
    "default_knowledge",
    "join_labels",
    "label_text",
    "normalize_name",
    "prompt_for_labels",
    "with_description",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""Versions of the expert-knowledge file format this module reads."""

_PACKAGED_FILE = "expert_knowledge.json"
_AUGMENT_MODES = ("random", "replace", "extend")


class ExpertKnowledgeError(ValueError):
    """A malformed expert-knowledge file or dict; the message names the source and the offending key."""


def normalize_name(name: str) -> str:
    """Lookup key of a class name or alias: lower case, ``_``/``-`` as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[_\-]", " ", name).lower().split())


def with_description(text: str, description: str) -> str:
    """A label text extended with one of its descriptions: ``"glaucoma, a thinned neuroretinal rim"``."""
    return f"{text}, {description}"


def join_labels(texts: Sequence[str]) -> str:
    """Join label texts naturally: ``"a"``, ``"a and b"``, ``"a, b and c"``.

    When a text already contains a comma (a label extended with a description), the items are separated by
    ``"; "`` instead, so that ``"a, desc"`` stays one item: ``"a, desc; b and c"``.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("join_labels needs at least one text.")
    if len(texts) == 1:
        return texts[0]
    separator = "; " if any("," in text for text in texts) else ", "
    return separator.join(texts[:-1]) + " and " + texts[-1]


def _fill(template: str, text: str) -> str:
    return template.replace("{}", text, 1)


def _template_problem(template: Any) -> str | None:
    if not isinstance(template, str):
        return f"expected a string, got {type(template).__name__}"
    if template.count("{}") != 1:
        return f"template {template!r} must contain exactly one '{{}}' (found {template.count('{}')})"
    rest = template.replace("{}", "")
    if "{" in rest or "}" in rest:
        return f"template {template!r} contains a brace other than its single '{{}}'"
    return None


@dataclass(frozen=True)
class ClassKnowledge:
    """What the dictionary knows about one class."""

    name: str
    aliases: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExpertKnowledge:
    """Per-modality prompt templates plus a class -> (aliases, modalities, descriptions) dictionary.

    Construction validates everything (templates with exactly one ``{}``, class modalities that exist,
    no name/alias shared by two classes) and raises :class:`ExpertKnowledgeError` naming ``source``.
    ``templates`` and ``classes`` are stored as read-only mappings.
    """

    version: int
    templates: Mapping[str, tuple[str, ...]]
    classes: Mapping[str, ClassKnowledge]
    source: str = field(default="<ExpertKnowledge>", compare=False, repr=False)
    _index: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        src = self.source
        if self.version not in SUPPORTED_VERSIONS:
            raise ExpertKnowledgeError(
                f"{src}: version: unsupported version {self.version!r} (supported: {list(SUPPORTED_VERSIONS)})"
            )
        templates: dict[str, tuple[str, ...]] = {}
        seen_modalities: dict[str, str] = {}
        for modality, items in self.templates.items():
            key = f"modalities[{modality!r}].templates"
            if not isinstance(modality, str) or not modality.strip():
                raise ExpertKnowledgeError(f"{src}: modalities: modality names must be non-empty strings")
            if modality.upper() in seen_modalities:
                raise ExpertKnowledgeError(
                    f"{src}: modalities[{modality!r}]: duplicates modality {seen_modalities[modality.upper()]!r}"
                )
            seen_modalities[modality.upper()] = modality
            items = tuple(items)
            if not items:
                raise ExpertKnowledgeError(f"{src}: {key}: needs at least one template")
            for i, template in enumerate(items):
                problem = _template_problem(template)
                if problem:
                    raise ExpertKnowledgeError(f"{src}: {key}[{i}]: {problem}")
            templates[modality] = items
        if not templates:
            raise ExpertKnowledgeError(f"{src}: modalities: at least one modality with templates is needed")

        classes: dict[str, ClassKnowledge] = {}
        index: dict[str, str] = {}
        for name, entry in self.classes.items():
            key = f"classes[{name!r}]"
            if not isinstance(entry, ClassKnowledge) or entry.name != name:
                raise ExpertKnowledgeError(f"{src}: {key}: expected a ClassKnowledge named {name!r}")
            for modality in entry.modalities:
                if modality not in templates:
                    raise ExpertKnowledgeError(
                        f"{src}: {key}.modalities: unknown modality {modality!r} (known: {sorted(templates)})"
                    )
            for field_name, value in (("name", name), *(("aliases", a) for a in entry.aliases)):
                if not isinstance(value, str) or not normalize_name(value):
                    raise ExpertKnowledgeError(
                        f"{src}: {key}.{field_name}: {value!r} is not a non-empty string"
                    )
                norm = normalize_name(value)
                owner = index.get(norm)
                if owner is not None and owner != name:
                    raise ExpertKnowledgeError(
                        f"{src}: {key}.{field_name}: {value!r} is already a name or alias of class {owner!r}"
                    )
                index[norm] = name
            for i, description in enumerate(entry.descriptions):
                if not isinstance(description, str) or not description.strip():
                    raise ExpertKnowledgeError(
                        f"{src}: {key}.descriptions[{i}]: {description!r} is not a non-empty string"
                    )
            classes[name] = entry
        object.__setattr__(self, "templates", MappingProxyType(templates))
        object.__setattr__(self, "classes", MappingProxyType(classes))
        object.__setattr__(self, "_index", MappingProxyType(index))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path | None = None) -> ExpertKnowledge:
        """Read a knowledge file; ``None`` reads the packaged ``retvlp/data/expert_knowledge.json``."""
        if path is None:
            resource = resources.files("retvlp.data").joinpath(_PACKAGED_FILE)
            source, text = str(resource), resource.read_text(encoding="utf-8")
        else:
            source, text = str(path), Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ExpertKnowledgeError(f"{source}: not valid JSON: {error}") from error
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> ExpertKnowledge:
        """Build from the JSON layout (a complete dictionary: version, modalities and classes required)."""
        version, templates, specs = _parse(data, source, partial=False)
        classes = {}
        for name, spec in specs.items():
            classes[name] = ClassKnowledge(
                name=name,
                aliases=spec.get("aliases", ()),
                modalities=spec.get("modalities", tuple(templates)),
                descriptions=spec["descriptions"],
            )
        return cls(version=version, templates=templates, classes=classes, source=source)

    def merged(self, other: ExpertKnowledge | Mapping[str, Any] | str | Path) -> ExpertKnowledge:
        """A copy extended/overridden by ``other`` (an :class:`ExpertKnowledge`, a dict or a JSON file path).

        ``other`` uses the file layout, every part optional (``version``, ``modalities``, ``classes``):

        * a modality's template list replaces ours; new modalities are added;
        * a class whose name or alias matches an existing class (see :meth:`canonical`) updates that class:
          each of ``aliases`` / ``modalities`` / ``descriptions`` it gives replaces ours, the others are kept;
        * any other class is added (``descriptions`` required; ``aliases`` default to none, ``modalities``
          to every modality of the merged result).

        The result is validated again (e.g. an alias taken by another class raises).
        """
        if isinstance(other, ExpertKnowledge):
            source = other.source
            data: Mapping[str, Any] = {
                "modalities": {m: {"templates": list(t)} for m, t in other.templates.items()},
                "classes": {
                    n: {
                        "aliases": list(c.aliases),
                        "modalities": list(c.modalities),
                        "descriptions": list(c.descriptions),
                    }
                    for n, c in other.classes.items()
                },
            }
        elif isinstance(other, (str, Path)):
            source = str(other)
            try:
                data = json.loads(Path(other).read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ExpertKnowledgeError(f"{source}: not valid JSON: {error}") from error
        else:
            source, data = "<dict>", other
        _, new_templates, specs = _parse(data, source, partial=True)
        templates = dict(self.templates)
        templates.update(new_templates)
        classes = dict(self.classes)
        for name, spec in specs.items():
            target = self.canonical(name)
            if target is not None:
                old = classes[target]
                classes[target] = ClassKnowledge(
                    name=target,
                    aliases=spec.get("aliases", old.aliases),
                    modalities=spec.get("modalities", old.modalities),
                    descriptions=spec.get("descriptions", old.descriptions),
                )
            else:
                if "descriptions" not in spec:
                    raise ExpertKnowledgeError(
                        f"{source}: classes[{name!r}]: missing key 'descriptions' (required for a new class)"
                    )
                classes[name] = ClassKnowledge(
                    name=name,
                    aliases=spec.get("aliases", ()),
                    modalities=spec.get("modalities", tuple(templates)),
                    descriptions=spec["descriptions"],
                )
        return ExpertKnowledge(
            version=self.version, templates=templates, classes=classes, source=f"{self.source} + {source}"
        )

    # ------------------------------------------------------------------ queries
    def canonical(self, name: str) -> str | None:
        """The canonical class name of a name or alias (case/whitespace/``_``/``-`` insensitive), else None."""
        if not isinstance(name, str):
            return None
        return self._index.get(normalize_name(name))

    def descriptions(self, name: str) -> tuple[str, ...]:
        """The expert descriptions of a class (by name or alias); ``()`` for an unknown class."""
        canonical = self.canonical(name)
        return self.classes[canonical].descriptions if canonical is not None else ()

    def templates_for(self, modality: str = "CFP") -> tuple[str, ...]:
        """The prompt templates of a modality (case-insensitive); ValueError listing the known ones."""
        return self.templates[self._modality_key(modality)]

    def classes_for(self, modality: str) -> tuple[str, ...]:
        """Canonical names of the classes whose ``modalities`` list ``modality`` (case-insensitive)."""
        key = self._modality_key(modality)
        return tuple(name for name, entry in self.classes.items() if key in entry.modalities)

    def _modality_key(self, modality: str) -> str:
        if isinstance(modality, str):
            for key in self.templates:
                if key.upper() == modality.strip().upper():
                    return key
        raise ValueError(f"Unknown modality {modality!r}; known modalities: {', '.join(self.templates)}.")


def _string_list(value: Any, source: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ExpertKnowledgeError(f"{source}: {key}: expected a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _parse(data: Any, source: str, *, partial: bool):
    """Check the JSON layout; returns (version, templates, class specs with only the keys given)."""
    if not isinstance(data, Mapping):
        raise ExpertKnowledgeError(f"{source}: expected a JSON object at the top level")
    for key in ("version", "modalities", "classes"):
        if not partial and key not in data:
            raise ExpertKnowledgeError(f"{source}: missing key {key!r}")
    unknown = set(data) - {"version", "modalities", "classes"}
    if unknown:
        raise ExpertKnowledgeError(f"{source}: unknown key(s) {sorted(unknown)}")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ExpertKnowledgeError(f"{source}: version: expected an integer, got {version!r}")
    if version is not None and version not in SUPPORTED_VERSIONS:
        raise ExpertKnowledgeError(
            f"{source}: version: unsupported version {version!r} (supported: {list(SUPPORTED_VERSIONS)})"
        )

    modalities = data.get("modalities", {})
    if not isinstance(modalities, Mapping):
        raise ExpertKnowledgeError(f"{source}: modalities: expected an object of modality -> {{templates}}")
    templates: dict[str, tuple[str, ...]] = {}
    for modality, entry in modalities.items():
        key = f"modalities[{modality!r}]"
        if not isinstance(entry, Mapping):
            raise ExpertKnowledgeError(f"{source}: {key}: expected an object with 'templates'")
        if "templates" not in entry:
            raise ExpertKnowledgeError(f"{source}: {key}: missing key 'templates'")
        items = entry["templates"]
        if not isinstance(items, list) or not items:
            raise ExpertKnowledgeError(f"{source}: {key}.templates: expected a non-empty list of strings")
        for i, template in enumerate(items):
            problem = _template_problem(template)
            if problem:
                raise ExpertKnowledgeError(f"{source}: {key}.templates[{i}]: {problem}")
        templates[modality] = tuple(items)

    classes = data.get("classes", {})
    if not isinstance(classes, Mapping):
        raise ExpertKnowledgeError(f"{source}: classes: expected an object of class name -> entry")
    specs: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, entry in classes.items():
        key = f"classes[{name!r}]"
        if not isinstance(name, str) or not name.strip():
            raise ExpertKnowledgeError(f"{source}: {key}: class names must be non-empty strings")
        if not isinstance(entry, Mapping):
            raise ExpertKnowledgeError(f"{source}: {key}: expected an object")
        unknown = set(entry) - {"aliases", "modalities", "descriptions"}
        if unknown:
            raise ExpertKnowledgeError(f"{source}: {key}: unknown key(s) {sorted(unknown)}")
        if not partial and "descriptions" not in entry:
            raise ExpertKnowledgeError(f"{source}: {key}: missing key 'descriptions'")
        specs[name.strip()] = {k: _string_list(v, source, f"{key}.{k}") for k, v in entry.items()}
    return version if version is not None else SUPPORTED_VERSIONS[-1], templates, specs


@lru_cache(maxsize=1)
def default_knowledge() -> ExpertKnowledge:
    """The packaged dictionary (loaded once)."""
    return ExpertKnowledge.load()


def label_text(name: str, knowledge: ExpertKnowledge | None = None) -> str:
    """Prompt text of a label: its canonical class name when known, else the cleaned raw label."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A class label must be a non-empty string, got {name!r}.")
    if knowledge is None:
        knowledge = default_knowledge()
    canonical = knowledge.canonical(name)
    return canonical if canonical is not None else " ".join(name.replace("_", " ").split())


def class_prompts(
    class_name: str,
    *,
    modality: str = "CFP",
    knowledge: ExpertKnowledge | None = None,
    include_descriptions: bool = True,
) -> list[str]:
    """The zero-shot prompt ensemble of one class (average their text embeddings into its prototype).

    For every template of ``modality`` (in order): the template filled with the class text, then, when
    ``include_descriptions``, the template filled with ``"<class text>, <description>"`` for each of the
    class's descriptions. ``T`` templates and ``D`` descriptions give ``T * (1 + D)`` prompts (duplicates
    dropped); an unknown class gives ``T`` prompts of its raw name.
    """
    if knowledge is None:
        knowledge = default_knowledge()
    templates = knowledge.templates_for(modality)
    text = label_text(class_name, knowledge)
    variants = [text]
    if include_descriptions:
        variants += [with_description(text, d) for d in knowledge.descriptions(class_name)]
    prompts = [_fill(template, variant) for template in templates for variant in variants]
    return list(dict.fromkeys(prompts))


def prompt_for_labels(
    labels: Sequence[str],
    rng: np.random.Generator,
    *,
    modality: str = "CFP",
    knowledge: ExpertKnowledge | None = None,
    augment_probability: float = 0.0,
    template: str | None = None,
    augment_mode: str = "random",
) -> str:
    """The training text of a categorical sample (KeepFIT V2 prompts with label augmentation).

    Steps, all randomness from ``rng`` (same generator state and arguments -> same text):

    1. the template: ``template`` when given (it must hold one ``{}``), otherwise
       ``templates[rng.integers(len(templates))]`` of ``modality``;
    2. each label (a plain string counts as one label; repeated labels are kept once) becomes its
       :func:`label_text`;
    3. label augmentation, per label in order, only when ``augment_probability > 0``: draw
       ``u = rng.random()``; if ``u < augment_probability`` and the class has descriptions, draw one
       description uniformly (``rng.integers``) and, for ``augment_mode="random"``, draw
       ``rng.random() < 0.5`` to choose *replace* (the label text becomes the description) over *extend*
       (``"<label text>, <description>"``); ``"replace"`` / ``"extend"`` force one form and draw nothing
       more. Unknown classes are never augmented (their ``u`` is still drawn);
    4. the texts are joined with :func:`join_labels` (``"a, b and c"``; ``"; "`` between items once an item
       holds a comma) and put into the template.

    ``augment_probability = 0`` uses no description and no extra random draws.
    """
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if not labels:
        raise ValueError("prompt_for_labels needs at least one label.")
    if not 0.0 <= augment_probability <= 1.0:
        raise ValueError(f"augment_probability must be in [0, 1], got {augment_probability}.")
    if augment_mode not in _AUGMENT_MODES:
        raise ValueError(f"augment_mode must be one of {_AUGMENT_MODES}, got {augment_mode!r}.")
    if knowledge is None:
        knowledge = default_knowledge()
    if template is None:
        templates = knowledge.templates_for(modality)
        template = templates[int(rng.integers(len(templates)))]
    else:
        problem = _template_problem(template)
        if problem:
            raise ValueError(problem)

    unique = list(dict.fromkeys(label_text(label, knowledge) for label in labels))
    texts: list[str] = []
    for text in unique:
        if augment_probability > 0.0:
            u = rng.random()
            descriptions = knowledge.descriptions(text)
            if u < augment_probability and descriptions:
                description = descriptions[int(rng.integers(len(descriptions)))]
                replace = augment_mode == "replace" or (augment_mode == "random" and rng.random() < 0.5)
                text = description if replace else with_description(text, description)
        texts.append(text)
    return _fill(template, join_labels(texts))
