"""`export --format transformers|timm`: a ViTReduced as Transformers' own ViT or timm's VisionTransformer, checked
against the ViTReduced model it came from (logits, labels, preprocessing) and against timm's evaluation transform."""

import json
import math
import subprocess
import textwrap
from dataclasses import dataclass

import pytest
import timm
import torch
from image_folders import sample_photos, write_photo_folder
from PIL import Image
from script_runs import environment
from timm.data import create_transform
from torchvision.transforms import functional as tvF
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    ViTConfig,
)

from hf_vit_reduction import REDUCTION_STRATEGIES, ViTReducedConfig, ViTReducedForImageClassification
from hf_vit_reduction.conversion.convert import main as convert
from hf_vit_reduction.conversion.export import main as export
from hf_vit_reduction.conversion.native import (
    NATIVE_FORMATS,
    TIMM_ACTIVATIONS,
    UnrepresentableError,
    check_representable,
    to_timm,
    to_transformers,
    training_only_notes,
    transformers_image_processor,
)
from hf_vit_reduction.image_processing_vit_reduced import Preprocessing, image_processor_for

LABELS = [f"class {index}" for index in range(10)]
HALF = (0.5, 0.5, 0.5)
PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
# The MLP width each strategy keeps at the digits preset (hidden 64, intermediate 256), by hand: shallow keeps half of
# 256, thin is 64 x 2, grouped keeps the full width (shared).
KEPT_WIDTH = {"baseline": 256, "grouped": 256, "shallow": 128, "thin": 128}


def trained_like(strategy: str, seed: int = 0, **overrides) -> ViTReducedForImageClassification:
    """A digits-sized model whose every weight is away from its init (biases, norms), so a dropped or swapped
    tensor shows in the logits."""
    torch.manual_seed(seed)
    config = ViTReducedConfig.from_preset(
        "digits",
        reduction_strategy=strategy,
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
        **overrides,
    )
    model = ViTReducedForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model


def save_folder(model, folder, crop_pct=0.9, interpolation="bicubic"):
    model.save_pretrained(folder)
    image_processor_for(32, crop_pct=crop_pct, interpolation=interpolation, mean=HALF, std=HALF).save_pretrained(
        folder
    )
    return folder


def logits_of(model, pixels=PIXELS) -> torch.Tensor:
    with torch.no_grad():
        output = model(pixels)
    return output if isinstance(output, torch.Tensor) else output.logits


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_transformers_vit_computes_what_the_model_computes(strategy):
    model = trained_like(strategy)
    native = to_transformers(model).eval()
    assert type(native.config) is ViTConfig and native.config.intermediate_size == KEPT_WIDTH[strategy]
    assert native.config.layer_norm_eps == 1e-6 and native.vit.layers[0].layernorm_before.eps == 1e-6
    assert native.config.id2label == dict(enumerate(LABELS))
    assert (logits_of(native) - logits_of(model)).abs().max() <= 1e-5
    if strategy == "grouped":
        # Each block its own copy: block 1's MLP equals block 0's, in storage of its own.
        fc1 = [native.vit.layers[index].mlp.fc1.weight for index in (0, 1)]
        assert torch.equal(*fc1) and fc1[0].data_ptr() != fc1[1].data_ptr()
        assert native.num_parameters() == trained_like("baseline").num_parameters()


@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_timm_vit_computes_what_the_model_computes(strategy):
    model = trained_like(strategy)
    native = to_timm(model)
    assert native.blocks[0].mlp.fc1.out_features == KEPT_WIDTH[strategy]
    assert (logits_of(native) - logits_of(model)).abs().max() <= 1e-5
    if strategy == "grouped":
        assert torch.equal(native.blocks[0].mlp.fc2.weight, native.blocks[1].mlp.fc2.weight)
        assert sum(p.numel() for p in native.parameters()) == trained_like("baseline").num_parameters()


@pytest.mark.parametrize("hidden_act", TIMM_ACTIVATIONS)
def test_every_activation_timm_names_computes_the_same(hidden_act):
    model = trained_like("thin", hidden_act=hidden_act)
    assert (logits_of(to_timm(model)) - logits_of(model)).abs().max() <= 1e-5


def test_transformers_keeps_a_layer_norm_eps_that_timm_cannot_hold():
    model = trained_like("shallow", layer_norm_eps=1e-12)
    native = to_transformers(model).eval()
    assert native.vit.layers[0].layernorm_after.eps == 1e-12 and native.vit.layernorm.eps == 1e-12
    assert (logits_of(native) - logits_of(model)).abs().max() <= 1e-5
    with pytest.raises(UnrepresentableError, match=r"--format timm cannot represent layer_norm_eps=1e-12 "):
        to_timm(model)
    with pytest.raises(UnrepresentableError, match=r"hidden_act='gelu_new'"):
        check_representable(trained_like("thin", hidden_act="gelu_new").config, "timm")


def test_a_training_only_field_is_exported_and_said_not_carried():
    model = trained_like("baseline", drop_path_rate=0.1, hidden_dropout_prob=0.1)
    assert training_only_notes(model.config, "transformers") == [
        "drop_path_rate=0.1 is not carried (Transformers' ViT has no stochastic depth); inference is unchanged"
    ]
    assert [note.split(" is ")[0] for note in training_only_notes(model.config, "timm")] == [
        "hidden_dropout_prob=0.1",
        "drop_path_rate=0.1",
    ]
    assert to_transformers(model).config.hidden_dropout_prob == 0.1
    assert (logits_of(to_timm(model)) - logits_of(model)).abs().max() <= 1e-5


@dataclass(repr=False)
class ConfigWithAnOption(ViTReducedConfig):
    """ViTReducedConfig with an option this exporter was not written for, as the ViT-family options will be."""

    num_register_tokens: int = 0


def test_an_option_away_from_its_default_is_refused_naming_it():
    check_representable(ConfigWithAnOption.from_preset("digits"), "transformers")  # at its default: representable
    config = ConfigWithAnOption.from_preset("digits", num_register_tokens=4)
    for format in ("transformers", "timm"):
        with pytest.raises(UnrepresentableError) as error:
            check_representable(config, format)
        assert str(error.value) == f"--format {format} cannot represent num_register_tokens=4 (the default is 0)"


# Preprocessings to check the exported processor on: the paper recipe's (shorter side to 248, crop 224), the digits
# recipe's at 32 px (crop_pct 1: shorter side to 32), timm's squash-and-crop (DeiT's 256 -> 224), and a squash alone.
PREPROCESSINGS = {
    "paper": Preprocessing(224, 0.9, "center", "bicubic", HALF, HALF),
    "digits": Preprocessing(32, 1.0, "center", "bicubic", HALF, HALF),
    "squash and crop": Preprocessing(
        224, 224 / 256, "squash", "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
    "squash": Preprocessing(96, 1.0, "squash", "bicubic", HALF, HALF),
}


def floored_crop_evaluation(preprocessing: Preprocessing):
    """timm's evaluation transform with the centre crop's offset floored instead of rounded: what the exported
    BitImageProcessor must compute, derived from timm's transform and torchvision's crop, not from the exporter."""
    evaluation = create_transform(
        input_size=preprocessing.image_size,
        is_training=False,
        crop_pct=preprocessing.crop_pct,
        crop_mode=preprocessing.crop_mode,
        interpolation=preprocessing.interpolation,
        mean=preprocessing.mean,
        std=preprocessing.std,
    )
    resize, _, to_tensor, normalize = evaluation.transforms
    size = preprocessing.image_size

    def transform(photo):
        resized = resize(photo)
        top, left = (resized.height - size) // 2, (resized.width - size) // 2
        return normalize(to_tensor(tvF.crop(resized, top, left, size, size)))

    return evaluation, transform


@pytest.mark.parametrize("name", PREPROCESSINGS)
def test_exported_processor_is_evaluation_but_for_the_floored_crop_offset(name, tmp_path):
    preprocessing = PREPROCESSINGS[name]
    evaluation, floored = floored_crop_evaluation(preprocessing)
    exported = transformers_image_processor(preprocessing)
    assert type(exported) is BitImageProcessor
    exported.save_pretrained(tmp_path)
    pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    photos = sample_photos(12)
    shifted = 0
    for photo in photos:
        pixels = pil(photo, return_tensors="pt").pixel_values[0]
        assert torch.equal(pixels, floored(photo)), photo.size  # PIL resizes as timm does: the very same pixels
        shifted += not torch.equal(pixels, evaluation(photo))
        tensor = exported(photo, return_tensors="pt").pixel_values[0]  # torchvision resizes a uint8 tensor
        grey_levels = ((tensor - pixels).abs() * 255 * torch.tensor(preprocessing.std)[:, None, None]).round()
        assert grey_levels.max() <= 2 and (grey_levels > 0).float().mean() < 0.01, photo.size
    # The residual difference, by hand: an offset (d / 2) rounds half to even and floors apart when d = 3 (mod 4).
    # The paper's 248 -> 224 (d = 24 on the shorter side) and DeiT's 256 -> 224 (d = 32) leave it to the longer
    # side of some photos; a squash without a crop has none.
    if name == "squash":
        assert shifted == 0
    elif name == "squash and crop":
        assert shifted == 0  # d = 32 on both sides of every photo
    else:
        assert 0 < shifted < len(photos)


@pytest.mark.parametrize("format", ["transformers", "timm"])
def test_export_command_writes_a_folder_that_loads_natively_and_converts_back(format, tmp_path, capsys):
    model = trained_like("grouped")
    source = save_folder(model, tmp_path / "grouped")
    out = tmp_path / f"grouped-{format}"
    export([str(source), str(out), "--format", format])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"Wrote {out}: ") and printed[0].endswith("on 3 random images.")
    assert printed[1].startswith("Note: grouped: each block holds its own copy of its group's shared MLP")
    expected = logits_of(model)
    loaded = AutoModelForImageClassification.from_pretrained(out).eval()
    assert (
        type(loaded).__name__
        == {"transformers": "ViTForImageClassification", "timm": "TimmWrapperForImageClassification"}[format]
    )
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert (logits_of(loaded) - expected).abs().max() <= 1e-5
    if format == "timm":
        saved_config = json.loads((out / "config.json").read_text())
        assert "num_classes" not in saved_config["model_args"] and saved_config["num_classes"] == 10
        assert saved_config["label_names"] == LABELS
        pretrained_cfg = saved_config["pretrained_cfg"]
        # The saved processor's crop_pct, 0.9, resizes to floor(32 / 0.9) = 35 px, as any crop_pct in (32/36, 32/35].
        assert math.floor(32 / pretrained_cfg["crop_pct"]) == 35 and pretrained_cfg["crop_mode"] == "center"
        assert pretrained_cfg["interpolation"] == "bicubic"
        assert pretrained_cfg["mean"] == pretrained_cfg["std"] == list(HALF)
        timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert (logits_of(timm_model) - expected).abs().max() <= 1e-5
    card = (out / "README.md").read_text()
    assert f"library_name: {format}" in card and "no remote code" in card and "custom_code" not in card
    assert f"exported\nfrom the ViTReduced model `{source}`" in card
    assert "same function at the baseline's size on disk" in card

    back = tmp_path / "back"
    convert(["--from", format, "--input", str(out), "--output_dir", str(back)])
    converted = ViTReducedForImageClassification.from_pretrained(back).eval()
    assert converted.config.intermediate_size == 256 and converted.config.reduction_strategy == "baseline"
    assert (logits_of(converted) - expected).abs().max() <= 1e-5
    assert converted.config.id2label == dict(enumerate(LABELS))
    processor = AutoImageProcessor.from_pretrained(back, backend="pil").to_dict()
    original = AutoImageProcessor.from_pretrained(source, backend="pil").to_dict()
    for key in ("size", "crop_size", "resample", "image_mean", "image_std", "do_center_crop"):
        assert processor[key] == original[key], key


def test_a_config_saved_alone_carries_its_code(tmp_path):
    save_folder(trained_like("thin"), tmp_path / "run")
    AutoConfig.from_pretrained(tmp_path / "run").save_pretrained(tmp_path / "config")
    saved = json.loads((tmp_path / "config" / "config.json").read_text())
    assert saved["auto_map"]["AutoConfig"] == "configuration_vit_reduced.ViTReducedConfig"
    assert (tmp_path / "config" / "configuration_vit_reduced.py").is_file()


BAD_EXPORTS = {  # case: (extra arguments, what the line says)
    "unknown format": (
        ["--format", "coreml"],
        "argument --format: invalid choice: 'coreml' (choose from 'onnx', 'transformers', 'timm')",
    ),
    "opset for a folder": (
        ["--format", "timm", "--opset_version", "18"],
        "--opset_version applies to --format onnx only",
    ),
    "hub id for onnx": (["--hub_model_id", "me/x"], "--hub_model_id applies to --format transformers and timm only"),
    "bad hub id": (["--format", "transformers", "--hub_model_id", "me/x/y"], "--hub_model_id 'me/x/y' is not valid"),
    "eps timm cannot hold": (
        ["--format", "timm"],
        "--format timm cannot represent layer_norm_eps=1e-12 (timm's ViT builds its LayerNorms with eps 1e-6",
    ),
    "non-empty output": (
        ["--format", "transformers"],
        "output {out} exists and is not empty; pass --overwrite_output_dir",
    ),
}


@pytest.mark.parametrize("case", BAD_EXPORTS)
def test_bad_export_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    source = save_folder(trained_like("shallow", layer_norm_eps=1e-12 if "eps" in case else 1e-6), tmp_path / "m")
    out = tmp_path / "out"
    if case == "non-empty output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = sorted(path.name for path in tmp_path.rglob("*"))
    capsys.readouterr()  # the saving's progress bars
    arguments, expected = BAD_EXPORTS[case]
    with pytest.raises(SystemExit) as exit_info:
        export([str(source), str(out), *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {expected.format(out=out)}") and error.count("\n") == 1, error
    assert sorted(path.name for path in tmp_path.rglob("*")) == before


# The slow tier: the exported folders in a Python where hf_vit_reduction cannot be imported.

LOAD_NATIVELY = """
    import importlib.util, json, sys
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageClassification, pipeline

    assert importlib.util.find_spec("hf_vit_reduction") is None
    folders, pixels_path, photos, out = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    pixels = torch.load(pixels_path)
    results = {}
    for folder in folders:
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=False).eval()
        classifier = pipeline("image-classification", model=folder, trust_remote_code=False)
        images = [Image.open(photo).convert("RGB") for photo in photos]
        with torch.no_grad():
            logits = model(pixels).logits
        result = {
            "class": type(model).__name__,
            "logits": logits,
            "top1": [predictions[0]["label"] for predictions in classifier(photos, top_k=1)],
            "processed": classifier.image_processor(images, return_tensors="pt").pixel_values,
        }
        if folder.endswith("timm"):
            import timm

            with torch.no_grad():
                result["timm_logits"] = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(pixels)
        results[folder] = result
    # A ViTReduced config saved on its own, read with its remote code.
    config = AutoConfig.from_pretrained(sys.argv[5], trust_remote_code=True)
    results["config"] = {"module": type(config).__module__, "strategy": config.reduction_strategy}
    torch.save(results, out)
"""


def run_bare(python, code: str, *args: str, cwd) -> None:
    """Run `code` in `python` (where this package cannot be imported) from `cwd`, away from this checkout."""
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env={key: value for key, value in environment().items() if key != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each strategy's model saved with the digits recipe's preprocessing (shorter side to 32 px, bicubic), exported
    in both formats; real photos; and the model's logits and this package's processors on them."""
    root = tmp_path_factory.mktemp("exports")
    photos = [str(path) for path in sorted(write_photo_folder(root / "photos", per_class=6).glob("*/*.png"))]
    images = [Image.open(photo).convert("RGB") for photo in photos]
    torch.save(PIXELS, root / "pixels.pt")
    models = {}
    for seed, strategy in enumerate(REDUCTION_STRATEGIES):
        model = models[strategy] = trained_like(strategy, seed=seed)
        source = save_folder(model, root / strategy, crop_pct=1.0)
        for format in NATIVE_FORMATS:
            export([str(source), str(root / f"{strategy}-{format}"), "--format", format])
    processed = {  # this package's processor, on each backend (timm's evaluation exactly with PIL)
        backend: AutoImageProcessor.from_pretrained(root / "thin", backend=backend)(images, return_tensors="pt")
        for backend in ("pil", "torchvision")
    }
    AutoConfig.from_pretrained(root / "thin").save_pretrained(root / "config-alone")
    return {"root": root, "photos": photos, "models": models, "processed": processed}


def top1(model, pixels) -> list[str]:
    return [model.config.id2label[index] for index in logits_of(model, pixels).argmax(-1).tolist()]


@pytest.mark.slow  # one process loading 8 folders, about half a minute on 2 cores
def test_every_export_loads_without_the_package_with_our_logits_and_pipeline_labels(exports, python_without_package):
    root = exports["root"]
    folders = [str(root / f"{strategy}-{format}") for strategy in REDUCTION_STRATEGIES for format in NATIVE_FORMATS]
    arguments = (json.dumps(folders), str(root / "pixels.pt"), json.dumps(exports["photos"]), str(root / "out.pt"))
    run_bare(python_without_package, LOAD_NATIVELY, *arguments, str(root / "config-alone"), cwd=root)
    loaded = torch.load(root / "out.pt")
    config = loaded.pop("config")
    assert config["module"].startswith("transformers_modules.") and config["strategy"] == "thin"
    shifted = {}
    for folder, result in loaded.items():
        strategy, format = folder.rsplit("/", 1)[1].split("-")
        model = exports["models"][strategy]
        native_class = {"transformers": "ViTForImageClassification", "timm": "TimmWrapperForImageClassification"}
        assert result["class"] == native_class[format], folder
        assert (result["logits"] - logits_of(model)).abs().max() <= 1e-5, folder
        if format == "timm":
            assert (result["timm_logits"] - logits_of(model)).abs().max() <= 1e-5, folder
        # The pipeline labels what the ViTReduced model labels on the pixels the exported processor gave.
        assert result["top1"] == top1(model, result["processed"]), folder
        # Those pixels: timm's evaluation (ours on PIL) exactly for timm's format; for Transformers', the same backend
        # as ours (torchvision), where only the floored crop offset moves some photos by a pixel.
        ours = exports["processed"]["pil" if format == "timm" else "torchvision"].pixel_values
        same = [torch.equal(mine, theirs) for mine, theirs in zip(ours, result["processed"])]
        expected = top1(model, ours)
        assert [label for label, kept in zip(result["top1"], same) if kept] == [
            label for label, kept in zip(expected, same) if kept
        ], folder
        shifted[folder] = (len(same) - sum(same), sum(a != b for a, b in zip(result["top1"], expected)))
        if format == "timm":
            assert all(same) and result["top1"] == expected, folder
    transformers_shifted = {folder: counts for folder, counts in shifted.items() if folder.endswith("transformers")}
    # Some photos keep our pixels exactly (and so our labels), and the labels vary from photo to photo.
    assert all(0 < moved < len(exports["photos"]) for moved, _ in transformers_shifted.values()), shifted
    assert any(
        len(set(top1(model, exports["processed"]["pil"].pixel_values))) > 1 for model in exports["models"].values()
    )
    print("photos moved by the floored crop, and labels changed:", shifted)


LOAD_FROM_THE_HUB = """
    import importlib.util, sys
    import timm, torch
    from transformers import AutoModelForImageClassification, pipeline

    assert importlib.util.find_spec("hf_vit_reduction") is None
    timm_repo, transformers_repo, pixels_path, photo, out = sys.argv[1:]
    pixels = torch.load(pixels_path)
    with torch.no_grad():
        logits = {
            "timm": timm.create_model(f"hf-hub:{timm_repo}", pretrained=True).eval()(pixels),
            "timm wrapper": AutoModelForImageClassification.from_pretrained(timm_repo).eval()(pixels).logits,
            "transformers": AutoModelForImageClassification.from_pretrained(transformers_repo).eval()(pixels).logits,
        }
    labels = {repo: pipeline("image-classification", model=repo)(photo)[0]["label"] for repo in sys.argv[1:3]}
    torch.save({"logits": logits, "labels": labels}, out)
"""


@pytest.mark.slow  # two pushes and a client process against the loopback Hub
def test_exported_folders_push_and_load_from_the_hub_without_the_package(exports, python_without_package, tmp_path):
    from hub_server import HubServer
    from test_hub import READ_TOKEN, WRITE_TOKEN, client_env, push_command

    root, model = exports["root"], exports["models"]["thin"]
    with HubServer({WRITE_TOKEN: {"user": "me", "write": True}, READ_TOKEN: {"user": "me", "write": False}}) as hub:
        for format in NATIVE_FORMATS:
            folder = tmp_path / format
            export([str(root / "thin"), str(folder), "--format", format, "--hub_model_id", f"me/vit-thin-{format}"])
            assert f'"me/vit-thin-{format}"' in (folder / "README.md").read_text()
            result = push_command(folder, f"me/vit-thin-{format}", client_env(hub.url, tmp_path / "home"))
            assert result.returncode == 0, result.stderr
            assert set(hub.files(f"me/vit-thin-{format}")) == {".gitattributes"} | {p.name for p in folder.iterdir()}
        env = client_env(hub.url, tmp_path / "home-load", token=READ_TOKEN, package=False)
        arguments = ("me/vit-thin-timm", "me/vit-thin-transformers", str(root / "pixels.pt"), exports["photos"][0])
        done = subprocess.run(
            [
                str(python_without_package),
                "-c",
                textwrap.dedent(LOAD_FROM_THE_HUB),
                *arguments,
                str(tmp_path / "out.pt"),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    for name, logits in loaded["logits"].items():
        assert (logits - logits_of(model)).abs().max() <= 1e-5, name
    expected = top1(model, exports["processed"]["pil"].pixel_values[:1])[0]
    assert loaded["labels"]["me/vit-thin-timm"] == expected
