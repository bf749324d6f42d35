"""The bundled offline task file is exactly what its generator produces."""
from megatiny.eval.tasks import build_local_mc


def test_shipped_local_mc_file_is_what_the_builder_makes():
    shipped = build_local_mc.OUTPUT.read_text(encoding="utf-8")
    assert shipped == build_local_mc.render(build_local_mc.build_items())
