"""Registries that name modules (CLI subcommands, ``nas latency`` verbs, predictor kinds): every
registered module imports, and one that fails to import is a one-line error naming it, never
skipped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _registered() -> list[tuple[str, str]]:
    import nas.cli
    import nas.cli.latency
    from latency_models import predictor

    return [
        *((m, "nas.cli.COMMAND_MODULES") for m in nas.cli.COMMAND_MODULES),
        *((m, "nas.cli.latency.VERB_MODULES") for m in nas.cli.latency.VERB_MODULES),
        *((m, "latency_models.predictor.PREDICTOR_MODULES") for m in predictor.PREDICTOR_MODULES),
    ]


@pytest.mark.parametrize(("module", "registry"), _registered())
def test_every_registered_module_imports(module: str, registry: str) -> None:
    from search_spaces.plugins import import_plugin

    assert import_plugin(module, registry).__name__ == module


def test_a_command_module_that_fails_to_import_stops_the_cli_with_one_line(monkeypatch, capsys) -> None:
    import nas.cli

    monkeypatch.setattr(nas.cli, "COMMAND_MODULES", (*nas.cli.COMMAND_MODULES, "nas.cli.no_such_command"))
    assert nas.cli.main(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nas.cli.COMMAND_MODULES" in err and "'nas.cli.no_such_command'" in err


def test_a_latency_verb_module_that_fails_to_import_stops_the_cli_with_one_line(monkeypatch, capsys) -> None:
    import nas.cli
    import nas.cli.latency

    monkeypatch.setattr(
        nas.cli.latency, "VERB_MODULES", (*nas.cli.latency.VERB_MODULES, "nas.cli.no_such_verb")
    )
    assert nas.cli.main(["latency", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nas.cli.latency.VERB_MODULES" in err and "'nas.cli.no_such_verb'" in err


def test_a_predictor_plugin_that_fails_to_import_is_an_error(monkeypatch, tmp_path: Path) -> None:
    from latency_models import predictor
    from search_spaces.errors import PluginError

    monkeypatch.setattr(predictor, "PREDICTOR_MODULES", ("latency_models.no_such_kind",))
    path = tmp_path / "p.json"
    doc = {
        "format": predictor.PREDICTOR_FORMAT,
        "version": predictor.PREDICTOR_VERSION,
        "kind": "some-plugin-kind",
        "space": "mbconv",
        "device": "d",
    }
    path.write_text(json.dumps(doc))
    with pytest.raises(PluginError, match=r"PREDICTOR_MODULES: .*'latency_models\.no_such_kind'") as raised:
        predictor.load_predictor(path)
    assert "\n" not in str(raised.value) and isinstance(raised.value, ImportError)


def test_a_plugin_whose_own_import_fails_is_reported_with_the_cause(tmp_path: Path, monkeypatch) -> None:
    """Not only a missing module: one that imports a missing dependency is an error too."""
    from search_spaces.errors import PluginError
    from search_spaces.plugins import import_plugin

    (tmp_path / "broken_plugin_for_test.py").write_text("import no_such_dependency_for_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="no_such_dependency_for_test"):
        import_plugin("broken_plugin_for_test", "a registry")
