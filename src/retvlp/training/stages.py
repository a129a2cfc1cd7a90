"""Whole recipes in one command: the stages a run depends on (`stages:` in its run file), run or reused first.

A run file names its prerequisite stages, each an ordinary run of its own family::

    stages:
      ibq_tokenizer: {config: training/configs/ibq_tokenizer_f16.yaml}          # → model.config.ibq_tokenizer_path
      text_mlm: {config: training/configs/text_mlm_bioclinicalbert.yaml,        # → model.text_pretrained
                 overrides: {optim.epochs: 5}}                                  #   + model.tokenizer

and `pretrain` runs them in this order (`STAGE_FAMILIES`) before the run itself, then wires each stage's
`final/` into the run's keys (`WIRED_KEYS`). For every stage:

* its config is the stage YAML, with `data: run` (the default) the main run's data — the IBQ codebook trains
  on the run's images (`data.train` / `data.synthetic` and where they may be read from: `RUN_DATA_KEYS`; how
  they are decoded, `image_size`, `pad_to_square`, ..., stays the stage's); the text MLM trains on the run's
  captions (every paired row's text, written to `<stage output_dir>/run_captions.jsonl`) — then its
  `overrides` (`section.key: value`); its `run.output_dir` is `output_dir`, by default
  `<run.output_dir>/stages/<name>`;
* `stage_record.json` in its output directory records the resolved config (less `IGNORED_KEYS`, which do not
  change what is trained) and a fingerprint of its data: every manifest / corpus file named in `data.train`
  by path, size and SHA-256 of its content (folders: a SHA-256 over the listing of relative path, size and
  mtime; image files a manifest names are not read: their decoded pixels are keyed by the image cache);
* a stage recorded as finished with the same config and data is reused (not run again); one recorded as
  started (a chain killed during it) resumes from its latest checkpoint (`--resume latest`), so a killed chain
  restarted with the same command continues bit for bit; a stage whose config or data differ from its record
  is refused with every difference named (key, recorded value, new value) unless it is listed in
  `rerun` (`--rerun-stages NAME[,NAME]` or `all`), which empties its output directory and trains it again;
* a stage whose wired keys the run already sets (e.g. `model.text_pretrained` given on the command line) is
  not run: the given value wins, with a warning.

Under several processes the stage runs under the same launcher; the main process alone writes the caption
corpus and the record and decides (reuse / resume / fresh / refuse), and the others follow its decision.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import STAGE_FAMILIES, ConfigError, PretrainConfig
from .run_lock import LOCK_FILE, run_lock

logger = logging.getLogger(__name__)

RECORD_FILE = "stage_record.json"
CAPTIONS_FILE = "run_captions.jsonl"
# The run's keys each stage's final/ is written into.
WIRED_KEYS = {
    "ibq_tokenizer": ("model.config.ibq_tokenizer_path",),
    "text_mlm": ("model.text_pretrained", "model.tokenizer"),
}
# `data: run`: the keys of the main run's `data` an IBQ stage takes (where the images come from).
RUN_DATA_KEYS = (
    "train",
    "synthetic",
    "cache_dir",
    "allowed_roots",
    "allow_outside_data_roots",
    "on_bad_sample",
)
# Keys that do not change what a stage trains: a difference in them does not make a finished stage stale.
IGNORED_KEYS = (
    "run.output_dir",
    "run.save_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.tensorboard",
    "data.num_workers",
    "data.preprocessing_workers",
    "data.cache_dir",
    "data.cache_max_size",
)


class StageMismatchError(ConfigError):
    """A finished (or started) stage was run with another config or data than the run now asks for."""


def stage_output_dir(config: PretrainConfig, name: str) -> Path:
    entry = config.stages[name]
    return Path(entry.get("output_dir") or Path(config.run.output_dir) / "stages" / name)


def _find_stage_file(path: str, source: str) -> Path:
    """The stage's YAML: as given (relative to the working directory), else next to the main run file."""
    candidate = Path(path)
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    beside = Path(source).parent / path
    return beside if beside.is_file() else candidate


def resolve_stage_config(config: PretrainConfig, name: str) -> PretrainConfig:
    """The config the stage `name` of `config` runs with (see the module docstring)."""
    entry = config.stages[name]
    path = _find_stage_file(entry["config"], config.source)
    stage = PretrainConfig.from_yaml(path)
    where = f"stages.{name} ({path})"
    if stage.stages:
        raise ConfigError(
            f"{where}: a stage's run file declares stages of its own; chains are one level deep."
        )
    if stage.model.family != STAGE_FAMILIES[name]:
        raise ConfigError(
            f"{where}: the stage trains model.family={STAGE_FAMILIES[name]}, but its run file has "
            f"model.family={stage.model.family}."
        )
    output_dir = stage_output_dir(config, name)
    if (entry.get("data") or "run") == "run":
        if name == "ibq_tokenizer":
            for key in RUN_DATA_KEYS:
                setattr(stage.data, key, copy.deepcopy(getattr(config.data, key)))
        else:
            stage.data.train = [{"path": str(output_dir / CAPTIONS_FILE), "text_column": "text"}]
            stage.data.synthetic = None
            stage.data.on_bad_sample = config.data.on_bad_sample
    stage.source = where
    stage.apply_overrides(
        [f"{key}={json.dumps(value)}" for key, value in (entry.get("overrides") or {}).items()]
    )
    stage.run.output_dir = str(output_dir)  # the record lives there: not an override
    return stage


def run_captions(config: PretrainConfig) -> list[str]:
    """The captions of the main run's data: the text of every paired row of `data.train` (and of the synthetic
    demo data), in manifest order."""
    from .data import read_training_manifests
    from .run_data import synthetic_manifest_specs

    data = config.data
    if any("shards" in spec for spec in data.train):
        raise ConfigError(
            f"{config.source}: stages.text_mlm takes its corpus from the run's manifests, but data.train holds "
            "prepared shard sets; give the stage its own corpus (stages.text_mlm.data: config, with data.train "
            "in its run file)."
        )
    specs = list(data.train)
    if data.synthetic is not None:
        specs = synthetic_manifest_specs(config)[0] + specs
    manifests = read_training_manifests(
        specs, allowed_roots=data.allowed_roots, allow_outside_data_roots=data.allow_outside_data_roots
    )
    texts = [
        r.text.strip()
        for m in manifests
        for r in m.records
        if r.role == "paired" and r.text and r.text.strip()
    ]
    if not texts:
        raise ConfigError(
            f"{config.source}: stages.text_mlm trains on the run's captions, but its data has no paired (image + "
            "text) rows; give the stage its own corpus (stages.text_mlm.data: config, with data.train in its run "
            "file)."
        )
    return texts


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _path_fingerprint(path: str) -> dict[str, Any]:
    target = Path(path)
    if target.is_file():
        return {"bytes": target.stat().st_size, "sha256": _sha256(target)}
    if target.is_dir():
        listing = hashlib.sha256()
        files = 0
        for item in sorted(p for p in target.rglob("*") if p.is_file() and p.name != LOCK_FILE):
            stat = item.stat()
            listing.update(f"{item.relative_to(target)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            files += 1
        return {"files": files, "listing_sha256": listing.hexdigest()}
    return {"missing": True}  # a Hub id / URL: named by the config alone


def data_fingerprint(stage: PretrainConfig) -> dict[str, Any]:
    """Path → size + SHA-256 of every manifest / corpus file of the stage's `data.train` (folders: the listing's
    SHA-256); the synthetic data are described by `data.synthetic` in the config."""
    prints = {}
    for spec in stage.data.train:
        for key in ("path", "hf_dataset", "shards"):
            if isinstance(spec.get(key), str):
                prints[spec[key]] = _path_fingerprint(spec[key])
    return prints


def comparable(stage: PretrainConfig) -> dict[str, Any]:
    """The stage's resolved config as flat `section.key` → value, less `IGNORED_KEYS` (JSON values)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", json.loads(json.dumps(stage.to_dict())))
    return {key: value for key, value in flat.items() if key not in IGNORED_KEYS}


def _inside(directory: Path, value: Any) -> Any:
    """`value` with a path inside the stage folder written relative to it ("<stage>/run_captions.jsonl"), so that a
    run named by a relative or by an absolute `run.output_dir` compares equal to its record."""
    if not isinstance(value, str) or not value:
        return value
    try:
        inner = Path(value).absolute().relative_to(directory.absolute())
    except ValueError:
        return value
    return f"<stage>/{inner.as_posix()}"


def differences(
    record: dict, config: dict, data: dict, directory: Path | None = None
) -> list[tuple[str, Any, Any]]:
    """(key, recorded, now) for every config key and data file that differ between `record` and now; with the
    stage's `directory`, paths inside it compare by their place in it."""
    if directory is not None:

        def local(value):
            if isinstance(value, list):
                return [
                    {k: _inside(directory, v) for k, v in item.items()} if isinstance(item, dict) else item
                    for item in value
                ]
            return _inside(directory, value)

        record = {
            "config": {k: local(v) for k, v in record.get("config", {}).items()},
            "data": {_inside(directory, k): v for k, v in record.get("data", {}).items()},
        }
        config = {k: local(v) for k, v in config.items()}
        data = {_inside(directory, k): v for k, v in data.items()}
    found = []
    old_config = record.get("config", {})
    for key in sorted(set(old_config) | set(config)):
        old, new = old_config.get(key, "<absent>"), config.get(key, "<absent>")
        if old != new:
            found.append((key, old, new))
    old_data = record.get("data", {})
    for path in sorted(set(old_data) | set(data)):
        old, new = old_data.get(path, "<absent>"), data.get(path, "<absent>")
        if old != new:
            found.append((f"data file {path}", old, new))
    return found


def _describe(diffs: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in diffs)


def _read_record(directory: Path) -> dict | None:
    path = directory / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _write_record(directory: Path, record: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".{RECORD_FILE}.tmp"
    staging.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(staging, directory / RECORD_FILE)


def _empty(directory: Path) -> None:
    """Remove a stage's outputs (under its run lock, so a stage run owning the folder is not pulled away)."""
    with run_lock(directory):
        for item in directory.iterdir():
            if item.name == LOCK_FILE:
                continue
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def decide(config: PretrainConfig, name: str, rerun: bool) -> tuple[str, PretrainConfig]:
    """Main process: prepare the stage's data, compare with its record and return (action, stage config), the
    action being `reuse`, `resume` or `fresh`; a stage that differs from its record without `rerun` raises
    `StageMismatchError`. Writes the record of a stage about to run."""
    directory = stage_output_dir(config, name)
    record = _read_record(directory)
    if rerun and directory.is_dir():
        if record is None and any(p.name not in (LOCK_FILE, CAPTIONS_FILE) for p in directory.iterdir()):
            raise ConfigError(
                f"stages.{name}: {directory} holds files but no {RECORD_FILE} (not a stage's output?); "
                "--rerun-stages empties only stage folders: delete it by hand or set stages."
                f"{name}.output_dir."
            )
        _empty(directory)
        record = None
    entry = config.stages[name]
    if name == "text_mlm" and (entry.get("data") or "run") == "run":
        texts = run_captions(config)
        _write_if_changed(directory / CAPTIONS_FILE, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    stage = resolve_stage_config(config, name)
    now, data = comparable(stage), data_fingerprint(stage)
    if record is not None:
        diffs = differences(record, now, data, directory)
        if diffs:
            raise StageMismatchError(
                f"stages.{name}: {directory} was {'trained' if record.get('status') == 'finished' else 'started'} "
                f"with another config or data than this run's: {_describe(diffs)}. Rerun it with --rerun-stages "
                f"{name} (its folder is emptied and it trains again), restore the recorded values, or give the stage "
                "another output_dir."
            )
        if record.get("status") == "finished" and (directory / "final").is_dir():
            return "reuse", stage
        return "resume", stage
    leftovers = (
        [p.name for p in directory.iterdir() if p.name not in (LOCK_FILE, CAPTIONS_FILE)]
        if directory.is_dir()
        else []
    )
    if leftovers:
        raise ConfigError(
            f"stages.{name}: {directory} holds {sorted(leftovers)[:5]} but no {RECORD_FILE}, so what trained it "
            f"is unknown; delete the folder or set stages.{name}.output_dir to an empty one."
        )
    _write_record(
        directory,
        {
            "stage": name,
            "status": "started",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": now,
            "data": data,
        },
    )
    return "fresh", stage


def _on_main_first(function: Callable[[], Any]) -> Any:
    """`function()` on the main process; its result (or its exception) handed to every process."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    # the process group as the run's Accelerator starts it (AcceleratorState reads ACCELERATE_USE_CPU the same
    # way; a PartialState started otherwise would be kept by it and the run would not be distributed)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes == 1:
        return function()
    payload: list[Any] = [None]
    if state.is_main_process:
        try:
            payload = [("ok", function())]
        except Exception as error:  # noqa: BLE001 - handed to every process and raised there
            payload = [("error", error)]
    broadcast_object_list(payload, from_process=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def _given(config: PretrainConfig, key: str) -> Any:
    if key == "model.config.ibq_tokenizer_path":
        return (config.model.config or {}).get("ibq_tokenizer_path")
    return getattr(config.model, key.split(".")[1])


def _wire(config: PretrainConfig, name: str, final: Path, warn: bool = True) -> None:
    if name == "ibq_tokenizer":
        config.model.config = {**(config.model.config or {}), "ibq_tokenizer_path": str(final)}
    else:
        if warn and config.model.tokenizer is not None:
            logger.warning(
                "stages.text_mlm: model.tokenizer=%r is replaced by the MLM stage's tokenizer (%s): the text "
                "tower reads its ids.",
                config.model.tokenizer,
                final,
            )
        config.model.text_pretrained = str(final)
        config.model.tokenizer = str(final)


def run_stages(
    config: PretrainConfig,
    run_stage: Callable[[PretrainConfig, str | None], Any],
    *,
    rerun: list[str] | tuple[str, ...] | str | None = None,
) -> tuple[PretrainConfig, list[str]]:
    """Run (or reuse, or resume) every stage of `config` in order; return a copy of `config` with their
    `final/` folders wired in and no stages left, and the names of the stages trained (not reused) by this call.
    `run_stage(stage_config, resume)` runs one stage (the loop: `pretrain`); `rerun` names the stages to train
    again ("all": every one)."""
    rerun_names = _rerun_names(config, rerun)
    trained = []
    wired = copy.deepcopy(config)
    wired.stages = {}
    probe = copy.deepcopy(wired)  # the run as it will be wired: refused now, not after the stages trained
    for name in config.stages:
        if _given(config, WIRED_KEYS[name][0]) is None:
            _wire(probe, name, stage_output_dir(config, name) / "final", warn=False)
    probe.validate()
    for name in STAGE_FAMILIES:
        if name not in config.stages:
            continue
        key = WIRED_KEYS[name][0]
        if _given(config, key) is not None:
            logger.warning(
                "stages.%s is not run: %s=%s is given, and a given value wins over the stage's output.",
                name,
                key,
                _given(config, key),
            )
            continue
        action, stage = _on_main_first(lambda name=name: decide(config, name, name in rerun_names))
        directory = Path(stage.run.output_dir)
        main = int(os.environ.get("RANK", "0")) == 0
        what = {
            "reuse": f"reusing {directory / 'final'} (trained with this config and data)",
            "resume": f"resuming {directory} from its latest checkpoint",
            "fresh": f"training in {directory}",
        }[action]
        if main:
            logger.info("stages.%s: %s.", name, what)
        if action != "reuse":
            run_stage(stage, "latest" if action == "resume" else None)
            trained.append(name)
            if main:
                record = _read_record(directory) or {}
                _write_record(
                    directory,
                    {**record, "status": "finished", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                )
        _wire(wired, name, directory / "final")
    wired.validate()
    return wired, trained


def _rerun_names(config: PretrainConfig, rerun) -> set[str]:
    if not rerun:
        return set()
    names = [n.strip() for n in (rerun.split(",") if isinstance(rerun, str) else rerun) if n.strip()]
    if "all" in names:
        return set(config.stages)
    unknown = sorted(set(names) - set(config.stages))
    if unknown:
        raise ConfigError(
            f"--rerun-stages {','.join(names)}: {unknown} not among this run's stages {sorted(config.stages)}."
        )
    return set(names)


__all__ = [
    "CAPTIONS_FILE",
    "RECORD_FILE",
    "StageMismatchError",
    "WIRED_KEYS",
    "comparable",
    "data_fingerprint",
    "resolve_stage_config",
    "run_captions",
    "run_stages",
    "stage_output_dir",
]
