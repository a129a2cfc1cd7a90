"""KeepFIT V2's preliminary textual pretraining (`retvlp.training.text_mlm_task.TextMLMTask` through the shared
loop, `retvlp.training.pretrain`): BERT masked-LM on a text corpus (`retvlp.data.text_corpus`).

Masking statistics, learning, exact resume, the `BertModel.from_pretrained` hand-over to KeepFIT, bad corpus
lines under both `on_bad_sample` policies, empty corpora, and 2 processes == 1 process.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fit_warmup, launch_ranks
from safetensors.torch import load_file

from retvlp.data.text_corpus import read_text_corpus
from retvlp.data.validation import DataValidationError
from retvlp.tokenization import TINY_CORPUS, build_wordpiece_tokenizer
from retvlp.training import PretrainConfig, pretrain
from retvlp.training.text_mlm_task import MLMStepBatches, lowercases_cased_vocabulary

TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def mlm_dict(tmp_path, files, name="run", **sections) -> dict:
    """6 optimizer steps of 2 micro-steps × 8 passages of a tiny BERT, checkpoints at 3 and 6."""
    raw = {
        "model": {
            "family": "text-mlm",
            "tokenizer": "build",
            "tokenizer_vocab_size": 300,
            "max_text_length": 32,
            "config": dict(TINY_BERT),
        },
        "data": {"train": [{"path": str(f)} for f in files], "num_workers": 0},
        "text-mlm": {"text_batch_size": 8},
        "optim": {
            "lr": 1e-3,
            "betas": [0.9, 0.999],
            "weight_decay": 0.01,
            "max_steps": 6,
            "warmup_steps": 1,
            "gradient_accumulation_steps": 2,
        },
        "run": {
            "output_dir": str(tmp_path / name),
            "save_every": 3,
            "log_every": 1,
            "evaluate": False,
            "tensorboard": False,
            "num_threads": 1,
        },
    }
    for section, values in sections.items():
        raw[section].update(values)
    return fit_warmup(raw)


def mlm_config(tmp_path, files, name="run", **sections) -> PretrainConfig:
    return PretrainConfig.from_dict(mlm_dict(tmp_path, files, name, **sections), source="test")


def _logs(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("corpus") / "corpus.txt", TINY_CORPUS)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, corpus_file):
    """The reference 6-step run (dropout on: its re-seeding per micro-step is part of what resume checks)."""
    config = mlm_config(tmp_path_factory.mktemp("straight"), [corpus_file], "straight")
    return pretrain(config, show_progress=False)


# ----------------------------------------------------------------------------------------------------------
# (1) masking


def test_fifteen_percent_of_ordinary_tokens_are_selected_never_special_or_padding():
    texts = list(TINY_CORPUS)
    tokenizer = build_wordpiece_tokenizer(texts, vocab_size=300)
    special_ids = torch.tensor(sorted(tokenizer.all_special_ids))
    mask_id = tokenizer.mask_token_id
    batches = [
        MLMStepBatches(
            texts, tokenizer, 16, rank=r, world_size=2, seed=3, max_length=16, mlm_probability=0.15
        )
        for r in (0, 1)
    ]
    candidates = selected_total = as_mask = unchanged = padding_seen = truncated_seen = 0
    for micro in range(50):
        batch = batches[0].global_batch(micro)
        # The unmasked ids, computed here from the rows alone.
        original = tokenizer(
            [texts[i] for i in batch["rows"]],
            truncation=True,
            max_length=16,
            padding="longest",
            return_tensors="pt",
        )
        ids, attention = original["input_ids"], original["attention_mask"].bool()
        assert batch["input_ids"].shape == ids.shape == batch["labels"].shape
        assert torch.equal(batch["attention_mask"].bool(), attention)
        ordinary = attention & ~torch.isin(ids, special_ids)
        selected = batch["labels"] != -100
        assert not (selected & ~ordinary).any(), "a special or padding token was selected"
        assert torch.equal(batch["labels"][selected], ids[selected])  # labels: the original token
        assert torch.equal(batch["input_ids"][~selected], ids[~selected])  # the rest untouched
        candidates += int(ordinary.sum())
        selected_total += int(selected.sum())
        as_mask += int((batch["input_ids"][selected] == mask_id).sum())
        unchanged += int((batch["input_ids"][selected] == ids[selected]).sum())
        padding_seen += int((~attention).sum())
        truncated_seen += int((attention.sum(1) == 16).sum())
        # each process gets its slice of the global batch, and knows the global number of selected tokens
        local = [b[micro] for b in batches]
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(torch.cat([part[key] for part in local]), batch[key])
        assert local[0]["num_selected_global"] == local[1]["num_selected_global"] == int(selected.sum())
    assert padding_seen > 500 and truncated_seen > 100  # the checks above covered padding and truncation
    assert candidates > 15000
    assert selected_total / candidates == pytest.approx(0.15, abs=0.01)
    assert as_mask / selected_total == pytest.approx(0.8, abs=0.03)  # BERT's 80 / 10 / 10
    assert unchanged / selected_total == pytest.approx(0.1, abs=0.03)


# ----------------------------------------------------------------------------------------------------------
# (2) learning


def test_loss_decreases_on_a_repetitive_corpus(tmp_path):
    lines = [
        "The optic disc is pink with sharp margins.",
        "Drusen at the macula.",
        "Cotton wool spots along the superior arcade.",
        "No diabetic retinopathy.",
    ] * 16
    corpus = write_lines(tmp_path / "repetitive.txt", lines)
    config = mlm_config(
        tmp_path,
        [corpus],
        **{"text-mlm": {"text_batch_size": 16}},
        optim={"lr": 1e-2, "max_steps": 30, "warmup_steps": 3, "gradient_accumulation_steps": 1},
        run={"save_every": 100},
    )
    result = pretrain(config, show_progress=False)
    losses = [entry["loss"] for entry in _logs(result.output_dir)]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    assert summary["steps"] == 30 and summary["corpus_passages"] == 64
    assert summary["fixed_slice"]["masked_accuracy"] > 0.1  # chance: 1 / 300


# ----------------------------------------------------------------------------------------------------------
# (3) resume, (4) the KeepFIT hand-over


def test_straight_run_equals_interrupted_and_resumed_run_bit_for_bit(tmp_path, corpus_file, straight_run):
    assert straight_run.steps == 6
    config = mlm_config(tmp_path, [corpus_file], "resumed")
    partial = pretrain(config, show_progress=False, stop_after=3)
    assert partial.steps == 3 and not partial.final_dir.exists()
    resumed = pretrain(config, resume="latest", show_progress=False)
    assert resumed.steps == 6

    a = load_file(str(straight_run.output_dir / "checkpoint-6" / "model.safetensors"))
    b = load_file(str(resumed.output_dir / "checkpoint-6" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("bert.encoder.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop = ("samples_per_s",)
    logs_a, logs_b = _logs(straight_run.output_dir), _logs(resumed.output_dir)
    assert [{k: v for k, v in e.items() if k not in drop} for e in logs_a] == [
        {k: v for k, v in e.items() if k not in drop} for e in logs_b
    ]
    assert [e["step"] for e in logs_a] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "masked_accuracy", "lr", "grad_norm", "samples_per_s", "epoch"} <= set(logs_a[0])


def test_final_directory_initialises_a_bert_text_encoder(straight_run):
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel

    final = straight_run.final_dir
    encoder = BertModel.from_pretrained(final)  # what KeepFIT's text encoder initialisation calls
    mlm = BertForMaskedLM.from_pretrained(final)
    trained = load_file(str(straight_run.output_dir / "checkpoint-6" / "model.safetensors"))
    encoder_state = encoder.state_dict()
    mlm_encoder = mlm.bert.state_dict()
    assert mlm_encoder and set(mlm_encoder) <= set(encoder_state)
    assert {k for k in encoder_state if k not in mlm_encoder} <= {"pooler.dense.weight", "pooler.dense.bias"}
    for name, value in mlm_encoder.items():
        assert torch.equal(encoder_state[name], value), name
        assert torch.equal(value, trained[f"bert.{name}"]), name  # = the trained weights

    tokenizer = AutoTokenizer.from_pretrained(final)
    assert len(tokenizer) == encoder.config.vocab_size
    inputs = tokenizer(["Drusen at the macula."], return_tensors="pt")
    assert encoder(**inputs).last_hidden_state.shape[-1] == 32
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["corpus_passages"] == len(TINY_CORPUS)
    assert summary["skipped_samples"] == 0 and summary["last_loss"] == summary["last_metrics"]["loss"]


# ----------------------------------------------------------------------------------------------------------
# (5) bad inputs, (6) empty corpora


def _bad_corpus(tmp_path) -> tuple[list[Path], set[tuple[str, int, str]], list[str]]:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(
        b"Normal fundus.\nDrusen at the macula \xe9t\xe9 2019.\n\nGlaucoma suspect with rim notching.\n"
    )
    reports = tmp_path / "reports.jsonl"
    reports.write_text(
        "\n".join(
            [
                json.dumps({"text": "Cup to disc ratio 0.8."}),
                '{"text": "Hard exudates near the fovea."',  # no closing brace
                json.dumps({"text": "   "}),
                json.dumps({"caption": "Tortuous retinal veins."}),
                json.dumps({"text": 5}),
                json.dumps({"text": "Peripapillary atrophy."}),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    findings = tmp_path / "findings.csv"
    findings.write_text(
        'id,text\n1,"Laser scars, mid periphery."\n2,\n3,Optic disc pallor.\n', encoding="utf-8"
    )
    expected = {
        (str(notes), 2, "not-utf8"),
        (str(reports), 2, "unparseable-row"),
        (str(reports), 3, "empty-caption"),
        (str(reports), 4, "empty-caption"),
        (str(reports), 5, "unparseable-row"),
        (str(findings), 3, "empty-caption"),
    }
    good = [
        "Normal fundus.",
        "Glaucoma suspect with rim notching.",
        "Cup to disc ratio 0.8.",
        "Peripapillary atrophy.",
        "Laser scars, mid periphery.",
        "Optic disc pallor.",
    ]
    return [notes, reports, findings], expected, good


def test_bad_lines_stop_the_run_naming_file_and_line(tmp_path):
    files, expected, good = _bad_corpus(tmp_path)
    corpus = read_text_corpus([{"path": str(f)} for f in files])
    assert corpus.texts == good
    assert {(p.source, p.row, p.kind) for p in corpus.report.problems} == expected
    assert corpus.report.num_records == len(good) + len(expected)

    with pytest.raises(DataValidationError) as error:
        pretrain(mlm_config(tmp_path, files, "error"), show_progress=False)
    message = str(error.value)
    for source, row, kind in expected:
        assert f"{source}:{row}: {kind}" in message
    assert {(p.source, p.row, p.kind) for p in error.value.report.problems} == expected
    assert not (tmp_path / "error" / "final").exists()

    missing = tmp_path / "absent.jsonl"
    for policy in ("error", "skip"):
        config = mlm_config(tmp_path, [files[0], missing], "missing", data={"on_bad_sample": policy})
        with pytest.raises(FileNotFoundError, match="absent.jsonl"):
            pretrain(config, show_progress=False)


def test_bad_lines_are_skipped_and_listed(tmp_path, corpus_file):
    files, expected, good = _bad_corpus(tmp_path)
    config = mlm_config(
        tmp_path, [*files, corpus_file], "skip", data={"on_bad_sample": "skip"}, optim={"max_steps": 1}
    )
    result = pretrain(config, show_progress=False)
    assert result.steps == 1
    skipped = [json.loads(x) for x in (result.output_dir / "skipped_samples.jsonl").read_text().splitlines()]
    assert {(s["source"], s["row"]) for s in skipped} == {(source, row) for source, row, _ in expected}
    assert len(skipped) == len(expected)
    for entry in skipped:
        kinds = {kind for source, row, kind in expected if (source, row) == (entry["source"], entry["row"])}
        assert [p.split(":")[0] for p in entry["problems"]] == sorted(kinds)
    summary = json.loads((result.final_dir / "training_summary.json").read_text())
    assert summary["skipped_samples"] == len(expected)
    assert summary["corpus_passages"] == len(good) + len(TINY_CORPUS)


def test_empty_corpus_is_an_error_naming_the_files(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty.*blank\.txt"):
        pretrain(mlm_config(tmp_path, [blank]), show_progress=False)

    all_bad = write_lines(tmp_path / "all_bad.jsonl", ['{"text": ""}', "not json"])
    config = mlm_config(tmp_path, [all_bad], "skip", data={"on_bad_sample": "skip"})
    with pytest.raises(ValueError, match=r"empty.*all_bad\.jsonl.*2 bad line"):
        pretrain(config, show_progress=False)


def test_corpus_formats_line_numbers_and_casing_guard(tmp_path):
    from transformers import BertTokenizerFast

    txt = tmp_path / "windows.txt"
    txt.write_bytes(b"\xef\xbb\xbfFirst line.\r\n\r\n  Second line.  \r\n")
    csv_file = tmp_path / "reports.csv"
    csv_file.write_text('id,Text\n1,"Line one\nline two"\n\n2,Next.\n', encoding="utf-8")
    log = tmp_path / "reports.log"
    write_lines(log, [json.dumps({"report": "Macular hole."})])
    corpus = read_text_corpus(
        [
            {"path": str(txt)},
            {"path": str(csv_file), "text_column": "text"},  # header match ignores case when unambiguous
            {"path": str(log), "format": "jsonl", "text_column": "report"},
        ]
    )
    assert corpus.texts == ["First line.", "Second line.", "Line one\nline two", "Next.", "Macular hole."]
    assert corpus.origins == [
        (str(txt), 1),
        (str(txt), 3),
        (str(csv_file), 2),
        (str(csv_file), 5),
        (str(log), 1),
    ]
    assert corpus.report.ok and corpus.report.num_records == 5
    with pytest.raises(ValueError, match="format"):
        read_text_corpus([{"path": str(log)}])
    with pytest.raises(ValueError, match=r"no column 'caption'.*\['id', 'Text'\]"):
        read_text_corpus([{"path": str(csv_file), "text_column": "caption"}])
    with pytest.raises(ValueError, match="image_root"):
        read_text_corpus([{"path": str(txt), "image_root": "x"}])

    cased = build_wordpiece_tokenizer(TINY_CORPUS, vocab_size=300)
    assert not lowercases_cased_vocabulary(cased)
    assert lowercases_cased_vocabulary(BertTokenizerFast(vocab=cased.get_vocab(), do_lower_case=True))


# ----------------------------------------------------------------------------------------------------------
# 2 processes == 1 process


def _pretrain_rank(config_path: str) -> int:
    """One launched rank (conftest.launch_ranks): the text-MLM run of `config_path`."""
    pretrain(PretrainConfig.from_yaml(config_path), show_progress=False)
    return 0


def test_two_processes_match_one_process_with_the_global_batch(tmp_path, corpus_file):
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    common = dict(optim={"max_steps": 3, "gradient_accumulation_steps": 1}, run={"save_every": 3})
    single_raw = mlm_dict(tmp_path, [corpus_file], "single", **{"text-mlm": {"text_batch_size": 8}}, **common)
    single_raw["model"]["config"] = no_dropout
    single = pretrain(PretrainConfig.from_dict(single_raw), show_progress=False)

    double_raw = mlm_dict(tmp_path, [corpus_file], "double", **{"text-mlm": {"text_batch_size": 4}}, **common)
    double_raw["model"]["config"] = no_dropout
    config_path = tmp_path / "double.yaml"
    config_path.write_text(yaml.safe_dump(double_raw))
    completed = launch_ranks(_pretrain_rank, str(config_path))
    assert completed.returncode == 0, completed.stderr[-4000:]

    double_dir = Path(double_raw["run"]["output_dir"])
    one, two = _logs(single.output_dir), _logs(double_dir)
    assert [e["step"] for e in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "masked_accuracy", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (a["step"], key)
    assert json.loads((double_dir / "final" / "training_summary.json").read_text())["world_size"] == 2
    a = load_file(str(single.output_dir / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(double_dir / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=2e-5, msg=key)
