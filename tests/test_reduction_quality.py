import json

import pytest

from hf_vit_reduction.study import reduction_quality


@pytest.mark.slow  # tens of seconds on 2 cores: the slow tier
def test_one_epoch_measurement_runs_and_reports_every_reduction(tmp_path):
    out = tmp_path / "quality.json"
    reduction_quality.main(["--seeds", "0", "--epochs", "1", "--json", str(out)])
    result = json.loads(out.read_text())["0"]
    assert result["max_logit_difference_timm_vs_converted"] <= 1e-4
    rows = result["rows"]
    assert rows["converted baseline"]["top1_agreement"] == 1.0
    assert set(rows) >= {
        "shallow 0.5 first",
        "shallow 0.5 magnitude",
        "grouped leader",
        "grouped mean",
        "shallow 0.5 activation",
        "shallow 0.5 taylor",
        "grouped aligned",
    }
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["logit_cosine"] <= 1.0
