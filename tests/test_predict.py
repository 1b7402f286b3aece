"""`predict`: the top-k labels and scores of each image of a folder, as `pipeline` gives them; unreadable files
skipped, named and counted; bad input in one line."""

import csv
import json

import pytest
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
from transformers import pipeline as transformers_pipeline

from hf_vit_reduction.evaluation.predict import main as predict

NAMES = ["cat", "dog", "fox", "owl"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(NAMES)),
        label2id={name: i for i, name in enumerate(NAMES)},
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(out)
    return out


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(5):
        pixels = torch.randint(0, 256, (20 + i, 30, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / ("more" if i % 2 else ".") / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return folder


def test_jsonl_holds_pipelines_top_k_per_image_and_unreadable_files_are_named(model_dir, photos, tmp_path, capsys):
    output = tmp_path / "p.jsonl"
    predict([str(model_dir), str(photos), "--output_file", str(output), "--top_k", "3", "--workers", "0"])
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    readable = sorted(str(p) for p in photos.rglob("*.png"))
    assert [line["file"] for line in lines] == readable
    classifier = transformers_pipeline("image-classification", model=str(model_dir))
    for line, expected in zip(lines, classifier(readable, top_k=3)):
        assert line["labels"] == [e["label"] for e in expected]
        assert line["scores"] == pytest.approx([e["score"] for e in expected], rel=1e-5)
        assert line["scores"] == sorted(line["scores"], reverse=True)
    out = capsys.readouterr().out
    assert "wrote 5 predictions (top 3)" in out
    assert f"skipped 1 unreadable file(s): {photos / 'broken.jpg'}" in out


def test_csv_of_listed_files_opens_as_a_table(model_dir, photos, tmp_path):
    output = tmp_path / "p.csv"
    files = [str(photos / "0.png"), str(photos / "more" / "1.png")]
    rows = predict([str(model_dir), *files, "--output_file", str(output), "--top_k", "9", "--workers", "0"])
    with output.open() as file:
        table = list(csv.DictReader(file))
    assert [row["file"] for row in table] == files
    assert list(table[0]) == ["file", *(f"{k}_{i}" for i in range(1, 5) for k in ("label", "score"))]  # 4 classes
    assert sorted(table[1][f"label_{i}"] for i in range(1, 5)) == sorted(NAMES)
    assert float(table[1]["score_1"]) == pytest.approx(rows[1]["scores"][0])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{model}", "{tmp}/absent.png", "--output_file", "{tmp}/p.jsonl"], "input '{tmp}/absent.png' does not exist"),
        (["{model}", "{tmp}/broken.jpg", "--output_file", "{tmp}/p.jsonl"], "none of the 1 input files is an image"),
        (["{model}", "{tmp}/photos", "--output_file", "{tmp}/no/p.jsonl"], "the folder '{tmp}/no' does not exist"),
        (["{model}", "{tmp}/photos", "--output_file", "{tmp}/p.txt"], "must end in .jsonl or .csv"),
        (["{tmp}", "{tmp}/photos", "--output_file", "{tmp}/p.csv"], "holds no config.json"),
    ],
)
def test_bad_input_ends_in_one_error_line(arguments, message, model_dir, photos, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as error:
        predict([a.format(model=model_dir, tmp=tmp_path) for a in arguments])
    text = str(error.value) if error.value.code != 2 else capsys.readouterr().err
    assert text.strip().startswith("error: ") and "\n" not in text.strip()
    assert message.format(tmp=tmp_path) in text
