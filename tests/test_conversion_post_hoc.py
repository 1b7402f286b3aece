import math

import pytest
import torch
from conversion_sources import MODEL_OPTIONS, PIXELS, max_difference, transformers_vit, unique_mlps

from hf_vit_reduction import ViTReducedForImageClassification
from hf_vit_reduction.conversion import reduce
from hf_vit_reduction.conversion.calibration import Calibration
from hf_vit_reduction.conversion.post_hoc import permuted_units


def test_shallow_first_is_the_papers_slice(make_model):
    baseline = make_model("baseline", seed=3)
    shallow = reduce(baseline, "shallow")
    assert shallow is not baseline and type(shallow) is ViTReducedForImageClassification
    config = shallow.config
    assert (config.reduction_strategy, config.reduction_mlp_ratio) == ("shallow", 0.5)
    assert config.mlp_hidden_size == 128 and len(unique_mlps(shallow)) == 4
    for full, pruned in zip(unique_mlps(baseline), unique_mlps(shallow)):
        assert torch.equal(pruned.fc1.weight, full.fc1.weight[:128])
        assert torch.equal(pruned.fc1.bias, full.fc1.bias[:128])
        assert torch.equal(pruned.fc2.weight, full.fc2.weight[:, :128])
        assert torch.equal(pruned.fc2.bias, full.fc2.bias)
    # The paper initializes shallow as the first units of the full init: a same-seed shallow model is identical.
    scratch = make_model("shallow", seed=3)
    pruned_per_mlp = 64 * 128 + 128 + 128 * 64  # fc1 rows, fc1 biases, fc2 columns
    assert shallow.num_parameters() == baseline.num_parameters() - 4 * pruned_per_mlp
    assert shallow.num_parameters() == scratch.num_parameters()
    reduced_state, scratch_state = shallow.state_dict(), scratch.state_dict()
    assert reduced_state.keys() == scratch_state.keys()
    assert all(torch.equal(reduced_state[k], scratch_state[k]) for k in scratch_state)
    # The source is left alone and shares no storage with the result.
    shallow.vit.layers[0].attention.qkv.weight.data.zero_()
    assert baseline.vit.layers[0].attention.qkv.weight.abs().sum() > 0
    assert tuple(unique_mlps(baseline)[0].fc1.weight.shape) == (256, 64)


def test_shallow_ratio_and_encoder_only(make_model):
    baseline = make_model()
    quarter = reduce(baseline.vit, "shallow", reduction_mlp_ratio=0.25)
    assert type(quarter).__name__ == "ViTReducedModel"
    assert quarter.config.mlp_hidden_size == 64
    assert tuple(quarter.layers[3].mlp.fc2.weight.shape) == (64, 64)


def test_magnitude_pruning_keeps_the_units_with_the_largest_norm_product(make_model):
    baseline = make_model()
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    strong, fc1_only, fc2_only = (
        permutation[:64],
        permutation[64:96],
        permutation[96:128],
    )
    with torch.no_grad():
        for mlp in unique_mlps(baseline):
            mlp.fc1.bias.normal_()
            mlp.fc1.weight[strong] *= 10
            mlp.fc2.weight[:, strong] *= 10
            # A large norm on one side only does not make a unit important.
            mlp.fc1.weight[fc1_only] *= 50
            mlp.fc2.weight[:, fc1_only] *= 0.01
            mlp.fc2.weight[:, fc2_only] *= 50
            mlp.fc1.weight[fc2_only] *= 0.01
    pruned = reduce(baseline, "shallow", reduction_mlp_ratio=0.25, prune_method="magnitude")
    kept = strong.sort().values
    for full, small in zip(unique_mlps(baseline), unique_mlps(pruned)):
        assert torch.equal(small.fc1.weight, full.fc1.weight[kept])
        assert torch.equal(small.fc1.bias, full.fc1.bias[kept])
        assert torch.equal(small.fc2.weight, full.fc2.weight[:, kept])
        assert torch.equal(small.fc2.bias, full.fc2.bias)
    first = reduce(baseline, "shallow", reduction_mlp_ratio=0.25)
    assert not torch.equal(unique_mlps(first)[0].fc1.weight, unique_mlps(pruned)[0].fc1.weight)


def planted_calibration(count=16):
    generator = torch.Generator().manual_seed(4)
    return Calibration(
        pixel_values=torch.randn(count, 3, 32, 32, generator=generator),
        labels=torch.randint(0, 10, (count,), generator=generator),
        batch_size=8,
    )


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_activation_and_taylor_rank_planted_units_first(make_model):
    baseline = make_model()
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    loud, useful = permutation[:64], permutation[64:128]
    with torch.no_grad():
        for mlp in unique_mlps(baseline):
            mlp.fc1.weight.mul_(0.01)
            mlp.fc1.bias.zero_()
            mlp.fc1.bias[loud] = 3.0  # large activations...
            mlp.fc2.weight.zero_()  # ...which nothing reads: no effect on the loss
            mlp.fc1.bias[useful] = 1.0
            mlp.fc2.weight[:, useful] = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
            # Magnitude sees only weights: the useful units' fc1 rows are tiny, so it does not pick them.
            mlp.fc1.weight[loud] *= 100
    calibration = planted_calibration()
    for method, planted in (("activation", loud), ("taylor", useful)):
        pruned = reduce(baseline, "shallow", reduction_mlp_ratio=0.25, prune_method=method, calibration=calibration)
        kept = planted.sort().values
        for full, small in zip(unique_mlps(baseline), unique_mlps(pruned)):
            assert torch.equal(small.fc1.weight, full.fc1.weight[kept]), method
            assert torch.equal(small.fc2.weight, full.fc2.weight[:, kept]), method
    with pytest.raises(ValueError, match="method 'taylor' ranks hidden units on data; pass calibration="):
        reduce(baseline, "shallow", prune_method="taylor")


def test_aligned_sharing_undoes_a_permutation_of_a_members_units(make_model):
    baseline = make_model(seed=2)
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for block in baseline.vit.layers:  # attention adds nothing...
            block.attention.proj.weight.zero_()
            block.attention.proj.bias.zero_()
        for leader in (0, 2):  # ...nor the leaders' MLPs: each member's MLP sees what its leader's sees
            member = baseline.vit.layers[leader + 1].mlp
            source = dict(baseline.vit.layers[leader].mlp.named_parameters())
            for name, value in permuted_units(source, permutation).items():
                member.get_parameter(name).copy_(value)
            baseline.vit.layers[leader].mlp.fc2.weight.zero_()
            baseline.vit.layers[leader].mlp.fc2.bias.zero_()
            member.fc2.weight.copy_(source["fc2.weight"][:, permutation])
    aligned = reduce(baseline, "grouped", share_method="aligned", calibration=planted_calibration())
    mean = reduce(baseline, "grouped", share_method="mean")
    for group, shared in enumerate(unique_mlps(aligned)):
        leader = baseline.vit.layers[2 * group].mlp
        # The member aligned back onto the leader: their average is the leader's fc1 exactly.
        assert torch.equal(shared.fc1.weight, leader.fc1.weight)
        assert torch.equal(shared.fc1.bias, leader.fc1.bias)
        assert not torch.allclose(unique_mlps(mean)[group].fc1.weight, leader.fc1.weight)


def test_aligned_sharing_keeps_the_whole_mlp_function_fc2_included(make_model):
    # Each member holds its leader's MLP with the hidden units permuted (fc1 rows and fc2 columns, fc2 non-zero):
    # the same function. Aligned sharing must give both blocks that function: the model whose members hold their
    # leader's MLP as it is, built here by copying, gives the same logits.
    baseline = make_model(seed=4)
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(5))
    expected = make_model(seed=4)
    with torch.no_grad():
        for leader in (0, 2):
            source = dict(baseline.vit.layers[leader].mlp.named_parameters())
            source["fc2.weight"].mul_(0.1)  # small enough that a member's input stays close to its leader's
            expected.vit.layers[leader].mlp.fc2.weight.copy_(source["fc2.weight"])
            member = baseline.vit.layers[leader + 1].mlp
            member.fc1.weight.copy_(source["fc1.weight"][permutation])  # by hand, not with permuted_units
            member.fc1.bias.copy_(source["fc1.bias"][permutation])
            member.fc2.weight.copy_(source["fc2.weight"][:, permutation])
            member.fc2.bias.copy_(source["fc2.bias"])
            for name, value in source.items():
                expected.vit.layers[leader + 1].mlp.get_parameter(name).copy_(value)
    assert all(layer.mlp.fc2.weight.abs().min() > 0 for layer in baseline.vit.layers)
    aligned = reduce(baseline, "grouped", share_method="aligned", calibration=planted_calibration(64))
    mean = reduce(baseline, "grouped", share_method="mean")
    with torch.no_grad():
        torch.testing.assert_close(aligned(PIXELS).logits, expected(PIXELS).logits, atol=1e-5, rtol=0)
        assert (mean(PIXELS).logits - expected(PIXELS).logits).abs().max() > 1e-2


def test_grouped_leader_shares_the_first_mlp_unscaled(make_model):
    baseline = make_model(seed=3)
    grouped = reduce(baseline, "grouped")
    config = grouped.config
    assert (config.reduction_strategy, config.mlp_share_group_size) == ("grouped", 2)
    assert config.reduction_mlp_ratio == pytest.approx(1 / math.sqrt(2))
    assert len(unique_mlps(grouped)) == 2
    scratch = make_model("grouped", seed=3)
    assert grouped.num_parameters() == scratch.num_parameters()
    for group, shared in enumerate(unique_mlps(grouped)):
        leader = baseline.vit.layers[2 * group].mlp
        for name, parameter in shared.named_parameters():
            assert torch.equal(parameter, leader.get_parameter(name))
        # The paper's 1/sqrt(2) is an init scale: a fresh grouped model is scaled, a reduced one is not.
        assert torch.allclose(
            unique_mlps(scratch)[group].fc1.weight,
            shared.fc1.weight / math.sqrt(2),
        )


def test_grouped_mean_averages_the_groups_mlps(make_model):
    baseline = make_model()
    with torch.no_grad():
        for mlp in unique_mlps(baseline):
            mlp.fc2.bias.normal_()
    for size in (2, 4):
        grouped = reduce(baseline, "grouped", share_method="mean", mlp_share_group_size=size)
        assert len(unique_mlps(grouped)) == 4 // size
        for group, shared in enumerate(unique_mlps(grouped)):
            members = unique_mlps(baseline)[group * size : (group + 1) * size]
            for name, parameter in shared.named_parameters():
                expected = sum(m.get_parameter(name) for m in members) / size
                assert torch.allclose(parameter, expected, atol=1e-7)


def test_sharing_identical_mlps_changes_no_output(make_model):
    baseline = make_model()
    with torch.no_grad():
        for index in (1, 3):
            baseline.vit.layers[index].mlp.load_state_dict(baseline.vit.layers[index - 1].mlp.state_dict())
        expected = baseline(PIXELS).logits
        for share_method in ("leader", "mean"):
            grouped = reduce(baseline, "grouped", share_method=share_method)
            assert max_difference(grouped(PIXELS).logits, expected) <= 1e-6


CUTS = [
    *({"strategy": "shallow", "prune_method": method} for method in ("first", "magnitude", "activation", "taylor")),
    *({"strategy": "grouped", "share_method": method} for method in ("leader", "mean", "aligned")),
]


@pytest.mark.parametrize("options", MODEL_OPTIONS.values(), ids=list(MODEL_OPTIONS))
@pytest.mark.parametrize("cut", CUTS, ids=lambda cut: cut.get("prune_method") or cut["share_method"])
@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_every_cut_works_on_every_option_and_keeps_what_is_not_an_mlp(make_model, options, cut):
    baseline = make_model(**options)
    calibration = Calibration(
        pixel_values=torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
        labels=torch.arange(6),
    )
    with torch.no_grad():
        if cut["strategy"] == "grouped":  # identical MLPs within each group: sharing them changes no output
            for index in (1, 3):
                baseline.vit.layers[index].mlp.load_state_dict(baseline.vit.layers[index - 1].mlp.state_dict())
        expected = baseline(PIXELS).logits
        kept = {"reduction_mlp_ratio": 1.0} if cut["strategy"] == "shallow" else {}  # every unit kept: the same
        reduced = reduce(baseline, **cut, **kept, calibration=calibration)
        assert max_difference(reduced(PIXELS).logits, expected) <= 1e-5
    assert {field: getattr(reduced.config, field) for field in options} == options
    outside = {k: v for k, v in baseline.state_dict().items() if ".mlp." not in k}
    assert all(torch.equal(reduced.state_dict()[k], v) for k, v in outside.items())


def test_reduced_model_saves_and_loads(make_model, tmp_path):
    reduced = reduce(make_model(), "shallow", prune_method="magnitude")
    reduced.save_pretrained(tmp_path)
    loaded = ViTReducedForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(PIXELS).logits, reduced(PIXELS).logits)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "thin"}, r"no post-hoc meaning.*use strategy='shallow'"),
        (
            {"strategy": "baseline"},
            "strategy='baseline' is not valid; allowed: 'shallow', 'grouped'",
        ),
        (
            {"strategy": "shallow", "prune_method": "largest"},
            "prune_method='largest' is not valid; allowed: 'first', 'magnitude'",
        ),
        (
            {"strategy": "grouped", "share_method": "sum"},
            "share_method='sum' is not valid; allowed: 'leader', 'mean'",
        ),
        (
            {"strategy": "grouped", "prune_method": "magnitude"},
            "prune_method='magnitude' is not valid with strategy='grouped'",
        ),
        (
            {"strategy": "shallow", "share_method": "mean"},
            "share_method='mean' is not valid with strategy='shallow'",
        ),
        (
            {"strategy": "grouped", "reduction_mlp_ratio": 0.5},
            "reduction_mlp_ratio=0.5 is not valid with strategy='grouped'",
        ),
        (
            {"strategy": "shallow", "reduction_mlp_ratio": 1.5},
            r"reduction_mlp_ratio=1.5 is not valid; allowed: a fraction in \(0, 1\]",
        ),
        (
            {"strategy": "grouped", "mlp_share_group_size": 3},
            "mlp_share_group_size=3 is not valid; allowed: a divisor of num_hidden_layers=4",
        ),
    ],
)
def test_reduce_refuses_bad_arguments(make_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        reduce(make_model(), **kwargs)


def test_reduce_refuses_models_it_cannot_reduce(make_model):
    with pytest.raises(ValueError, match="reduction_strategy='shallow'; allowed: 'baseline'"):
        reduce(make_model("shallow"), "grouped")
    with pytest.raises(TypeError, match="convert others with from_transformers"):
        reduce(transformers_vit(), "shallow")
