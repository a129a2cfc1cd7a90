"""Build one `ModelTesterMixin` test case per retvlp model class from a small `ModelSpec`.

A spec names the model class, a tiny config, the common inputs and the model-tester attributes the upstream
tests read (`batch_size`, `seq_length`, `hidden_size`, `num_hidden_layers`, ...). `switched_off` lists the
upstream tests that do not apply to the class, each with the reason the feature does not exist; an entry that
matches no upstream test is an error, so that stale entries do not pile up. A failure of any other test is a
finding about our code, never a reason to add an entry.

Adaptations of the upstream suite, all in this file:

* transformers decides which tests apply by looking a class's NAME up in its auto-mapping name tables
  (`MODEL_MAPPING_NAMES`: a base model, skipped by the loss-based training tests; the image-classification
  table: gets `labels` from `_prepare_for_class`; ...). Those tables list transformers' own models only, so the
  test module's copies are extended with our classes as they are registered with the Auto classes (plus the
  roles a spec declares, e.g. `KeepFitVisionModel` is a base model that no Auto class maps to). Only the
  upstream test module's own copies change; transformers' Auto classes are untouched.
* `TorchExportTests.test_torch_export` stands in for the upstream `ExportTesterMixin` (not in the sdist).
* `TorchCompileTests` adds two checks of claims that upstream only tests on accelerators or silently skips:
  `_can_compile_fullgraph` (compiled without graph breaks) and the `set_attn_implementation` support.
* image-only classes get the vision variant of `test_model_get_set_embeddings` that transformers' own ViT,
  ViT-MAE, ... testers use (the generic test asserts a token `nn.Embedding`); CNN classes the feature-map
  variant of `test_hidden_states_output` that its ResNet tester uses (the generic one expects token shapes).
* `test_can_init_all_missing_weights` (meta-device init) runs for every class: upstream dates a model by the
  copyright line of its config file, and ours have none.
* `ConfigTester` checks run as one test each (`test_config_*`) in the case whose spec has `config_tester`.
"""

import copy
import fnmatch
import unittest
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, set_seed
from transformers.models.auto import modeling_auto
from transformers.models.auto.auto_factory import _LazyAutoMapping
from transformers.testing_utils import torch_device

from .upstream import Upstream


@dataclass
class ModelSpec:
    model_class: type
    get_config: Callable[[], PreTrainedConfig]
    get_inputs: Callable[[PreTrainedConfig, int], dict]  # (config, batch_size) -> common inputs
    tester: dict  # attributes of the model tester (batch_size is required)
    switched_off: dict[str, str] = field(default_factory=dict)  # test name or glob -> why it does not apply
    attributes: dict[str, tuple[Any, str]] = field(default_factory=dict)  # mixin flag -> (value, why)
    config_tester: dict | None = None  # ConfigTester(config_class=..., **kwargs) checks run in this case
    image_only: bool = False  # pixel inputs only: vision variant of test_model_get_set_embeddings
    feature_maps: bool = False  # conv feature maps as hidden states: CNN variant of test_hidden_states_output
    auto_names: tuple[str, ...] = ()  # extra `*_MAPPING_NAMES` tables the class belongs to

    @property
    def name(self) -> str:
        return f"{self.model_class.__name__}Test"


class SpecModelTester:
    """The `model_tester` the upstream tests talk to."""

    def __init__(self, parent: unittest.TestCase, spec: ModelSpec):
        self.parent = parent
        self.spec = spec
        self.is_training = True
        for key, value in spec.tester.items():
            setattr(self, key, value)

    def get_config(self) -> PreTrainedConfig:
        return self.spec.get_config()

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        return config, self.spec.get_inputs(config, self.batch_size)


class TorchExportTests:
    """Our stand-in for the torch.export part of the upstream `ExportTesterMixin` (not in the sdist)."""

    def test_torch_export(self):
        """`torch.export.export` (non-strict, static shapes) of the eval-mode model on the common inputs; the
        exported program reproduces the eager outputs."""
        if not self.test_torch_exportable:
            self.skipTest(reason="test_torch_exportable is False")
        for model_class in self.all_model_classes:
            config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            with torch.no_grad():
                set_seed(0)
                eager = model(**inputs)
                program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                set_seed(0)
                exported = program.module()(**inputs)
            eager_leaves = torch.utils._pytree.tree_leaves(eager)
            exported_leaves = torch.utils._pytree.tree_leaves(exported)
            self.assertEqual(
                len(eager_leaves), len(exported_leaves), "exported program returns other outputs"
            )
            for index, (expected, actual) in enumerate(zip(eager_leaves, exported_leaves, strict=True)):
                if isinstance(expected, torch.Tensor):
                    torch.testing.assert_close(
                        actual, expected, atol=1e-5, rtol=1e-4, msg=f"output leaf {index}"
                    )


class TorchCompileTests:
    """Checks of claims upstream only tests on an accelerator (or not at all on CPU)."""

    def test_torch_compile_fullgraph(self):
        """A class with `_can_compile_fullgraph = True` compiles without graph breaks (`fullgraph=True`, the
        `aot_eager` backend: dynamo + AOT autograd tracing, no code generation) and reproduces eager."""
        for model_class in self.all_model_classes:
            if not getattr(model_class, "_can_compile_fullgraph", False):
                self.skipTest(reason=f"{model_class.__name__} does not claim _can_compile_fullgraph")
            config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            inputs = self._prepare_for_class(inputs_dict, model_class)
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
            with torch.no_grad():
                set_seed(0)
                eager = torch.utils._pytree.tree_leaves(model(**inputs))
                set_seed(0)
                traced = torch.utils._pytree.tree_leaves(compiled(**inputs))
            torch._dynamo.reset()
            self.assertEqual(len(eager), len(traced), "compiled model returns other outputs")
            for index, (expected, actual) in enumerate(zip(eager, traced, strict=True)):
                if isinstance(expected, torch.Tensor):
                    torch.testing.assert_close(
                        actual, expected, atol=1e-5, rtol=1e-4, msg=f"output leaf {index}"
                    )

    def test_can_set_attention_dynamically_is_supported(self):
        """A class with attention layers that supports SDPA passes transformers' `_can_set_attn_implementation()`
        heuristic; otherwise `set_attn_implementation` only warns (leaving the configs inconsistent) and
        upstream's `test_can_set_attention_dynamically*` skip themselves."""
        if not self.has_attentions:
            self.skipTest(reason="Model architecture does not support attentions")
        for model_class in self.all_model_classes:
            if not model_class._supports_sdpa:
                self.skipTest(reason=f"{model_class.__name__} does not support SDPA")
            self.assertTrue(
                model_class._can_set_attn_implementation(),
                f"{model_class.__name__}: transformers cannot switch its attention implementation: its module "
                "defines an `*Attention*(nn.Module)` class without `ALL_ATTENTION_FUNCTIONS.get_interface(`",
            )


class VisionEmbeddingsTests:
    def test_model_get_set_embeddings(self):
        """Vision variant (as in transformers' ViT / ViT-MAE testers): the input embeddings are a module (the
        patch embedding), the output embeddings are absent or linear."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))


# Test-case attributes the upstream tests read with getattr(self, name, default) (not ModelTesterMixin flags).
OPTIONAL_HOOKS = {
    "additional_model_inputs",  # inputs besides main_input_name that test_eager_matches_sdpa_inference passes
    "skip_test_image_features_output_shape",  # test_get_image_features_output: skip only its token-shape check
}


class FeatureMapHiddenStatesTests:
    def test_hidden_states_output(self):
        """CNN variant (as in transformers' ResNet / ConvNeXt testers): `hidden_states` are `(batch, channels, h,
        w)` maps, the stem's output then one per stage; requested by argument or by the config. The tester gives
        `num_stages` and `first_feature_map_size`."""

        def check(inputs, config, model_class):
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**self._prepare_for_class(inputs, model_class))
            hidden_states = outputs.hidden_states
            self.assertIsNotNone(hidden_states, "output_hidden_states was not honoured")
            self.assertEqual(len(hidden_states), self.model_tester.num_stages + 1)
            size = self.model_tester.first_feature_map_size
            self.assertListEqual(list(hidden_states[0].shape[-2:]), [size, size])

        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            check({**inputs_dict, "output_hidden_states": True}, config, model_class)
            config = copy.deepcopy(config)
            config.output_hidden_states = True
            self._set_subconfig_attributes(config, "output_hidden_states", True)
            check(inputs_dict, config, model_class)


# ---------------------------------------------------------------------------------------------- auto names
def _registered_auto_names(model_class: type) -> list[str]:
    """Names of the `*_MAPPING` tables of `transformers.models.auto.modeling_auto` that map a config to
    `model_class` through `AutoModel*.register` (what importing retvlp does)."""
    found = []
    for name in dir(modeling_auto):
        mapping = getattr(modeling_auto, name)
        if isinstance(mapping, _LazyAutoMapping) and model_class in mapping._extra_content.values():
            found.append(f"{name}_NAMES")
    return found


def install_auto_names(upstream: Upstream, specs: list[ModelSpec]) -> None:
    """Add our classes to the upstream test module's copies of the auto-mapping name tables."""
    module = upstream.modeling
    for spec in specs:
        config_class = spec.model_class.config_class
        for table_name in {*_registered_auto_names(spec.model_class), *spec.auto_names}:
            table = getattr(module, table_name, None)
            if table is None:
                continue
            if table is getattr(modeling_auto, table_name, None):
                table = OrderedDict(table)  # a private copy: transformers' own table stays as it is
                setattr(module, table_name, table)
            names = table.get(config_class.model_type, ())
            names = (names,) if isinstance(names, str) else tuple(names)
            if spec.model_class.__name__ not in names:
                table[config_class.model_type] = (*names, spec.model_class.__name__)


# ---------------------------------------------------------------------------------------------- test cases
def _switched_off(reason: str):
    @unittest.skip(reason=f"switched off: {reason}")
    def test(self):
        pass

    return test


def _config_test(method_name: str):
    def test(self):
        getattr(self.config_tester, method_name)()

    test.__name__ = f"test_{method_name.removeprefix('create_and_test_').removeprefix('check_')}"
    test.__doc__ = f"ConfigTester.{method_name}"
    return test


def make_test_case(spec: ModelSpec, upstream: Upstream, module_name: str) -> type:
    mixin = upstream.modeling.ModelTesterMixin
    config_tester_class = upstream.configuration.ConfigTester

    def setUp(self):  # noqa: N802 (unittest's name)
        # Upstream builds some assertion messages eagerly (`test_bc_torch_dtype` formats both tensors of each of
        # 14 loads × every parameter, pass or fail: half its time). Summarised tensors keep the messages
        # readable at a fraction of the cost; no assertion changes.
        torch.set_printoptions(threshold=16, edgeitems=2)
        self.addCleanup(torch.set_printoptions, profile="default")
        self.model_tester = SpecModelTester(self, spec)
        if spec.config_tester is not None:
            self.config_tester = config_tester_class(self, **spec.config_tester)

    attributes = {
        "__doc__": f"transformers' ModelTesterMixin on {spec.model_class.__name__}.",
        "__module__": module_name,
        "all_model_classes": (spec.model_class,),
        "_is_composite": bool(spec.get_config().sub_configs),
        # Upstream skips the meta-device init check for models "added before 2023", dated by a `# Copyright
        # YYYY` line in the config file; ours carry none (read as year 0), and are new: check them.
        "test_can_init_all_missing_weights_before_2023": True,
        "setUp": setUp,
        "spec": spec,
    }
    for flag, (value, _why) in spec.attributes.items():
        if not hasattr(mixin, flag) and flag not in OPTIONAL_HOOKS:
            raise ValueError(f"{spec.name}: ModelTesterMixin has no flag {flag!r}")
        attributes[flag] = value
    if spec.config_tester is not None:
        for method_name in dir(config_tester_class):
            if method_name.startswith(("create_and_test_", "check_")):
                test = _config_test(method_name)
                if hasattr(mixin, test.__name__):
                    raise ValueError(
                        f"{spec.name}: {test.__name__} would hide ModelTesterMixin.{test.__name__}"
                    )
                attributes[test.__name__] = test

    bases = [TorchExportTests, TorchCompileTests, mixin, unittest.TestCase]
    if spec.image_only:
        bases.insert(0, VisionEmbeddingsTests)
    if spec.feature_maps:
        bases.insert(0, FeatureMapHiddenStatesTests)
    available = {name for base in bases for name in dir(base) if name.startswith("test_")} | set(attributes)
    for pattern, reason in spec.switched_off.items():
        matches = fnmatch.filter(available, pattern)
        if not matches:
            raise ValueError(f"{spec.name}: switched_off entry {pattern!r} matches no test")
        for name in matches:
            attributes[name] = _switched_off(reason)

    return type(spec.name, tuple(bases), attributes)


def build_test_cases(specs: list[ModelSpec], upstream: Upstream, module_name: str) -> dict[str, type]:
    """`{name: TestCase}` for the specs, to put into a test module's globals."""
    install_auto_names(upstream, specs)
    return {spec.name: make_test_case(spec, upstream, module_name) for spec in specs}
