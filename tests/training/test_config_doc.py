"""docs/CONFIG.md is generated from the run-config dataclasses and must be up to date."""
from megatiny.training import config as run_config
from megatiny.training.config_doc import SECTIONS, field_docs, render
from tests.helpers import REPO_ROOT


def test_committed_config_reference_is_current():
    committed = (REPO_ROOT / "docs" / "CONFIG.md").read_text()
    assert committed == render(), ("docs/CONFIG.md is stale: run "
                                   "`python -m megatiny.training.config_doc > docs/CONFIG.md`")


def test_every_run_config_key_is_documented():
    """A field added without the string literal under it would show an empty meaning."""
    for cls in (run_config.RunConfig, *(run_config._SECTION_TYPES[name] for name in SECTIONS)):
        docs = field_docs(cls)
        for name in (f for f in cls.__dataclass_fields__ if f not in (*SECTIONS, "model", "data")):
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
    assert field_docs(run_config.BatchConfig)["seq_length"].startswith("tokens per sample")
