"""The registry is the single source of truth: CLI commands, registry entries and diagram nodes agree."""

from __future__ import annotations

import pytest

from llmds.errors import InvalidInputError
from llmds_cli import diagram, registry
from llmds_cli.app import app


BUILT_IN_COMMANDS = {"list", "env", "bench", "compare", "report", "profile", "diagram", "datasets"}


def test_cli_components_registry_and_diagram_are_the_same_set():
    from typer.main import get_command

    component_commands = set(get_command(app).commands) - BUILT_IN_COMMANDS
    _, boxes, _, _ = diagram.layout()
    assert component_commands == set(registry.COMPONENTS)
    assert set(boxes) == set(registry.COMPONENTS)


def test_all_six_components_are_registered():
    assert set(registry.names()) == {"kv", "sched", "hnsw", "bm25", "cms", "pipeline"}


def test_flows_and_dependencies_name_registered_components():
    for flow in registry.FLOWS:
        assert flow.source in registry.COMPONENTS and flow.target in registry.COMPONENTS
    assert set(registry.get("pipeline").depends_on) == {"bm25", "hnsw", "cms"}
    assert registry.get("sched").depends_on == ("kv",)


def test_unknown_component_names_the_known_ones():
    with pytest.raises(InvalidInputError, match="known components: bm25"):
        registry.get("nope")


def test_ready_components_have_a_complete_module():
    for component in registry.COMPONENTS.values():
        if not component.ready:
            continue
        module = component.load()
        for attribute in ("ADAPTERS", "load_workload", "configurations", "summarize", "TABLE", "charts"):
            assert hasattr(module, attribute), (component.name, attribute)
        assert "llmds" in module.ADAPTERS
        for peer in component.peers:
            assert peer.name in module.ADAPTERS or peer.exact, (component.name, peer.name)


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="has no parameter 'k2'"):
        registry.get("bm25").param("k2")
