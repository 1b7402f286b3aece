import pytest

from hf_vit_reduction import REDUCTION_STRATEGIES
from hf_vit_reduction.conversion.export import export_onnx, main, max_onnx_logit_difference


@pytest.mark.slow  # about 10 s per strategy on 2 cores
@pytest.mark.parametrize("strategy", REDUCTION_STRATEGIES)
def test_onnx_export_matches_pytorch_under_onnxruntime(make_model, tmp_path, strategy):
    model = make_model(strategy)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert path.stat().st_size > 0
    assert max_onnx_logit_difference(model, path, batch_size=5) <= 1e-4


@pytest.mark.slow  # tens of seconds on 2 cores: the slow tier
def test_export_command(make_model, tmp_path, capsys):
    make_model("grouped").save_pretrained(tmp_path / "model")
    main([str(tmp_path / "model"), str(tmp_path / "out" / "model.onnx")])
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert "onnxruntime's logits differ from PyTorch's by at most" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing"), str(tmp_path / "x.onnx")])
    assert "missing does not exist: it is neither a local folder nor a Hub id (org/name)" in capsys.readouterr().err
