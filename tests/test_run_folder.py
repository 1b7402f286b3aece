import json

import pytest

from hf_vit_reduction.hub.model_card import main as model_card_main
from hf_vit_reduction.hub.run_folder import CorruptRunFile, read_history, read_json


def test_missing_files_read_as_nothing(tmp_path):
    assert read_json(tmp_path / "results.json") is None
    assert read_history(tmp_path / "history.jsonl") == []


def test_files_read_back_as_written(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"final_top1": 97.5, "seed": 1}))
    rows = [{"epoch": 0, "top1": 50.0, "step": 10}, {"epoch": 1, "top1": 75.25}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    assert read_json(tmp_path / "results.json") == {"final_top1": 97.5, "seed": 1}
    assert read_history(tmp_path / "history.jsonl") == rows


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("results.json", '{"final_top1": 9', "corrupt results.json (Expecting"),
        ("results.json", "[1, 2]", "corrupt results.json (not a JSON object)"),
        ("history.jsonl", '{"epoch": 0, "top1": 1.0}\n{"epoch": 1, "top1"', "corrupt history.jsonl line 2 (Expecting"),
        ("history.jsonl", '{"epoch": 0, "top1": NaN}\n', "history.jsonl line 1 has no numeric epoch and top1"),
        ("history.jsonl", '{"epoch": true, "top1": 3.0}\n', "history.jsonl line 1 has no numeric epoch and top1"),
    ],
)
def test_a_corrupt_file_is_named_with_what_is_wrong(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    reader = read_json if name.endswith(".json") else read_history
    with pytest.raises(CorruptRunFile) as error:
        reader(tmp_path / name)
    assert str(error.value).startswith(message)


def test_the_card_command_names_a_corrupt_run_file_in_one_line(tmp_path, make_model, capsys):
    make_model("shallow").save_pretrained(tmp_path)
    (tmp_path / "results.json").write_text("{")
    capsys.readouterr()  # the save's progress bar
    with pytest.raises(SystemExit) as exit_info:
        model_card_main([str(tmp_path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: corrupt results.json (") and error.count("\n") == 1
    assert not (tmp_path / "README.md").exists()
