"""ParallelLayout arithmetic (no processes) and the real process groups of a 4-rank gloo run."""
import pytest

from megatiny.parallel.state import GROUP_AXES, ParallelLayout, RankCoordinates


def test_for_world_derives_the_data_parallel_size():
    layout = ParallelLayout.for_world(16, tensor=2, pipeline=2, context=2)
    assert (layout.tensor, layout.pipeline, layout.context, layout.data) == (2, 2, 2, 2)
    assert layout.world_size == 16
    assert ParallelLayout.for_world(4).data == 4


def test_rank_order_is_tensor_fastest_then_context_data_pipeline():
    layout = ParallelLayout(tensor=2, context=2, data=2, pipeline=2)
    assert layout.coordinates(0) == RankCoordinates(tensor=0, context=0, data=0, pipeline=0)
    assert layout.coordinates(1) == RankCoordinates(tensor=1, context=0, data=0, pipeline=0)
    assert layout.coordinates(2) == RankCoordinates(tensor=0, context=1, data=0, pipeline=0)
    assert layout.coordinates(4) == RankCoordinates(tensor=0, context=0, data=1, pipeline=0)
    assert layout.coordinates(8) == RankCoordinates(tensor=0, context=0, data=0, pipeline=1)
    assert layout.coordinates(15) == RankCoordinates(tensor=1, context=1, data=1, pipeline=1)
    assert [layout.rank_of(layout.coordinates(r)) for r in range(16)] == list(range(16))
    with pytest.raises(ValueError, match="outside a layout of 16 ranks"):
        layout.coordinates(16)


def test_group_ranks_of_a_tensor2_data4_layout():
    layout = ParallelLayout.for_world(8, tensor=2)
    assert layout.group_ranks(("tensor",)) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # inside a host
    assert layout.group_ranks(("data",)) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert layout.group_ranks(("pipeline",)) == [[r] for r in range(8)]


def test_every_rank_is_in_exactly_one_group_of_each_kind():
    layout = ParallelLayout(tensor=2, context=2, data=2, pipeline=2)
    for name, axes in GROUP_AXES.items():
        groups = layout.group_ranks(axes)
        assert sorted(r for g in groups for r in g) == list(range(16)), name
        size = 1
        for axis in axes:
            size *= getattr(layout, axis)
        assert all(len(g) == size for g in groups), name


@pytest.mark.parametrize("kwargs, message", [
    (dict(world_size=6, tensor=4), r"world size 6 is not divisible by parallel.tensor x parallel.pipeline"),
    (dict(world_size=4, tensor=0), r"parallel.tensor x parallel.pipeline x parallel.context = 0 x 1 x 1"),
    (dict(world_size=2, sequence_parallel=True), r"parallel.sequence_parallel .* needs parallel.tensor > 1"),
    (dict(world_size=2, tensor=2, sequence_parallel="yes"),
     r"parallel.sequence_parallel must be true or false"),
])
def test_bad_layouts_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelLayout.for_world(**kwargs)


def test_layout_fields_are_validated():
    with pytest.raises(ValueError, match="parallel.context must be a positive integer"):
        ParallelLayout(context=1.5)
    assert ParallelLayout.for_world(4, tensor=2, sequence_parallel=True).to_dict() == {
        "tensor": 2, "pipeline": 1, "context": 1, "data": 2, "sequence_parallel": True}


@pytest.mark.slow
def test_process_groups_and_mpu_in_a_four_rank_run(four_rank_engines):
    layouts = {"t2d2": dict(tensor=2), "t2c2": dict(tensor=2, context=2),
               "t2p2": dict(tensor=2, pipeline=2), "c2p2": dict(context=2, pipeline=2)}
    for name, sizes in layouts.items():
        layout = ParallelLayout.for_world(4, **sizes)
        for rank, results in enumerate(four_rank_engines):
            got = results["groups"][name]
            for group, axes in GROUP_AXES.items():
                want = next(g for g in layout.group_ranks(axes) if rank in g)
                assert got["members"][group] == want, (name, rank, group)
                total, expected = got["sums"][group]
                assert total == expected, (name, rank, group)  # the group really connects them
            c = layout.coordinates(rank)
            data_context = next(g for g in layout.group_ranks(("context", "data")) if rank in g)
            assert got["mpu"] == {
                "model": [c.tensor + layout.tensor * c.pipeline, layout.tensor * layout.pipeline],
                "tensor": [c.tensor, layout.tensor, rank - c.tensor],
                "data": [data_context.index(rank), layout.data * layout.context, data_context],
                "pipeline": [c.pipeline, layout.pipeline],
            }, (name, rank)


@pytest.mark.slow
def test_why_context_ranks_are_data_parallel_ranks_to_deepspeed(reference_engines, two_rank_engines):
    """Through DeepSpeed's own sequence-parallel groups one loss convention cannot be exact under
    both ZeRO-1 and ZeRO-3 (see DeepSpeedMPU). If this starts failing, DeepSpeed has changed its
    scaling and the simpler route may be usable."""
    one_rank = reference_engines["one-zero1"]["grad_norms"][0]
    for results in two_rank_engines:
        norms = results["deepspeed-sp-cp2"]
        assert norms["zero1"] == pytest.approx(one_rank, rel=1e-5)
        assert norms["zero3"] == pytest.approx(one_rank / 2, rel=1e-5)
