"""What the platform asks the model config before training: which configurations train the same network
(`AVMAEConfig.canonical`), and which parameters a step leaves without a gradient (`unused_parameters`).
Both are rules written without torch; these tests hold them against real forward and backward passes."""

import itertools
import subprocess
import sys

import pytest
import torch
from avmae.models import (
    CONTEXTS,
    DECODERS,
    DIRECTIONS,
    FUSIONS,
    OBJECTIVES,
    SIZES,
    create_model,
    resolve_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every network-shaping choice the study files sweep, on the tiny preset: 144 configurations.
GRID = [dict(fusion=f, decoder=d, objective=o, inpainting_direction=r, inpainting_context=c)
        for f, d, o, r, c in itertools.product(FUSIONS, DECODERS, OBJECTIVES, DIRECTIONS, CONTEXTS)]


def batch(model, b=2):
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(b, *model.input_shapes["audio"], generator=g)
    video = torch.rand(b, *model.input_shapes["video"], generator=g) * 2 - 1
    return audio, video


def fingerprint(preset="tiny", **kwargs):
    """(parameter names and shapes, loss) of a model built from seed 0, with non-zero heads (zero heads
    predict 0 whatever the network, which would make every loss depend on the targets alone)."""
    torch.manual_seed(0)
    model = create_model(preset, **kwargs)
    torch.manual_seed(1)
    for head in model.decoder.head.values():
        torch.nn.init.normal_(head.weight, std=0.2)
    with torch.no_grad():
        loss = model(*batch(model), generator=1).loss.item()
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()), loss


# (configuration, another that trains the same network): one pair per rule of `canonical`.
SAME = {
    "joint decoder under inpainting is shared": (
        dict(objective="inpainting", decoder="joint"), dict(objective="inpainting", decoder="shared")),
    "joint objective ignores the direction": (
        dict(objective="joint", inpainting_direction="a2v"), dict(objective="joint")),
    "joint objective ignores the context": (
        dict(objective="joint", fusion="early", inpainting_context="source"),
        dict(objective="joint", fusion="early")),
    "fusion_layers only matters for mid fusion": (
        dict(fusion="early", fusion_layers=3), dict(fusion="early", fusion_layers=1)),
    "source context of early fusion is shared fusion": (
        dict(objective="inpainting", fusion="early", inpainting_context="source"),
        dict(objective="inpainting", fusion="shared", inpainting_context="source")),
    "late fusion: source context is both": (
        dict(objective="inpainting", fusion="late", inpainting_context="source"),
        dict(objective="inpainting", fusion="late")),
    "shared fusion: source context is both": (
        dict(objective="inpainting", fusion="shared", inpainting_context="source", decoder="separate"),
        dict(objective="inpainting", fusion="shared", decoder="separate")),
    "an isolated target's mask ratio is not read": (
        dict(objective="inpainting", inpainting_direction="a2v", fusion="mid", inpainting_context="source",
             mask_ratio_video=0.5),
        dict(objective="inpainting", inpainting_direction="a2v", fusion="mid", inpainting_context="source")),
    "the loss weight of a modality not reconstructed": (
        dict(objective="inpainting", inpainting_direction="v2a", loss_weight_video=0.2),
        dict(objective="inpainting", inpainting_direction="v2a", loss_weight_video=0.9)),
}

# Pairs one field apart that must stay apart: the limits of each rule.
DIFFERENT = {
    "joint decoder under the joint objective": (dict(decoder="joint"), dict(decoder="shared")),
    "fusion_layers under mid fusion": (
        dict(fusion="mid", fusion_layers=1), dict(fusion="mid", fusion_layers=2)),
    "source context under early fusion": (
        dict(objective="inpainting", fusion="early", inpainting_context="source"),
        dict(objective="inpainting", fusion="early")),
    "source context under mid fusion": (
        dict(objective="inpainting", fusion="mid", inpainting_context="source"),
        dict(objective="inpainting", fusion="mid")),
    "the target's mask ratio with cross-modal context": (
        dict(objective="inpainting", inpainting_direction="a2v", fusion="early", mask_ratio_video=0.5),
        dict(objective="inpainting", inpainting_direction="a2v", fusion="early")),
    "a source's mask ratio": (
        dict(objective="inpainting", inpainting_direction="a2v", fusion="late", mask_ratio_audio=0.75),
        dict(objective="inpainting", inpainting_direction="a2v", fusion="late")),
    "the direction under inpainting": (
        dict(objective="inpainting", inpainting_direction="a2v"), dict(objective="inpainting")),
    "a reconstructed modality's loss weight": (
        dict(objective="inpainting", inpainting_direction="v2a", loss_weight_audio=0.2),
        dict(objective="inpainting", inpainting_direction="v2a")),
}


@pytest.mark.parametrize("rule", SAME)
def test_each_canonical_rule_joins_two_configs_that_train_the_same_network(rule):
    a, b = SAME[rule]
    assert resolve_config("tiny", **a) != resolve_config("tiny", **b)
    assert resolve_config("tiny", **a).canonical() == resolve_config("tiny", **b).canonical()
    assert fingerprint(**a) == fingerprint(**b)


@pytest.mark.parametrize("case", DIFFERENT)
def test_configs_a_rule_does_not_cover_stay_apart_and_differ(case):
    a, b = DIFFERENT[case]
    assert resolve_config("tiny", **a).canonical() != resolve_config("tiny", **b).canonical()
    assert fingerprint(**a) != fingerprint(**b)


def test_preset_and_input_names_are_labels():
    spelled_out = dict(input="tiny", **SIZES["tiny"])
    assert resolve_config("small", **spelled_out).canonical() == resolve_config("tiny").canonical()
    assert fingerprint("small", **spelled_out) == fingerprint("tiny")


def test_canonical_groups_of_the_whole_grid_are_exactly_the_identical_networks():
    """Over every fusion x decoder x objective x direction x context: configurations with one canonical
    form have one fingerprint (keys, shapes, loss), and different canonical forms never share one."""
    groups: dict[str, set] = {}
    for kwargs in GRID:
        key = repr(resolve_config("tiny", **kwargs).canonical())
        groups.setdefault(key, set()).add(fingerprint(**kwargs))
    assert all(len(prints) == 1 for prints in groups.values())
    distinct = {next(iter(prints)) for prints in groups.values()}
    assert len(distinct) == len(groups)
    # joint: fusion x decoder; inpainting: {separate, shared} x direction x {early, early-source = shared,
    # late, mid, mid-source}
    assert len(groups) == 4 * 3 + 2 * 3 * 5


def test_canonical_form_is_a_valid_fixed_point():
    for kwargs in GRID:
        canonical = resolve_config("base", **kwargs).canonical()
        assert canonical.canonical() == canonical


def name_is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("fusion", "decoder"), list(itertools.product(FUSIONS, DECODERS)))
def test_unused_parameters_are_exactly_those_without_a_gradient(fusion, decoder):
    """One real forward and backward per combination; learned modality tokens on, so tokenizers hold two
    parameters each."""
    for objective, direction, context in itertools.product(OBJECTIVES, DIRECTIONS, CONTEXTS):
        model = create_model("tiny", fusion=fusion, decoder=decoder, objective=objective, modality_embed=True,
                             inpainting_direction=direction, inpainting_context=context)
        model(*batch(model)).loss.backward()
        rule = model.config.unused_parameter_prefixes
        without_grad = {n for n, p in model.named_parameters() if p.grad is None}
        predicted = {n for n, _ in model.named_parameters() if name_is_under(n, rule)}
        assert without_grad == predicted, (objective, direction, context)
        assert all(any(name_is_under(n, (p,)) for n, _ in model.named_parameters()) for p in rule)
        assert model.config.unused_parameters is (objective == "inpainting" and direction != "both")
        assert model.config.unused_parameters is bool(rule)  # DDP's C++ reducer takes a bool, no tuple


def test_the_config_side_imports_without_torch():
    code = ("import sys; from avmae.models import AVMAEConfig, resolve_config; "
            "c = resolve_config('base', objective='inpainting', decoder='joint'); "
            "c.canonical(); c.unused_parameters; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kwargs", [dict(objective="joint"),
                                    dict(objective="inpainting", inpainting_direction="a2v", fusion="late")])
def test_ddp_trains_with_the_flag_the_config_gives(kwargs, tmp_path):
    """The trainer passes `unused_parameters` to DDP as is: it must be a flag DDP takes, and enough (DDP
    without the search fails on the second step when a parameter got no gradient)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = create_model("tiny", **kwargs)
        ddp = DistributedDataParallel(model, find_unused_parameters=model.config.unused_parameters)
        for _ in range(2):
            ddp(*batch(model)).loss.backward()
        if model.config.unused_parameters:
            strict = DistributedDataParallel(model, find_unused_parameters=False)
            strict(*batch(model)).loss.backward()
            with pytest.raises(RuntimeError, match="find_unused_parameters"):
                strict(*batch(model)).loss.backward()
    finally:
        dist.destroy_process_group()
