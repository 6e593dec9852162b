"""Imports flow one way, bottom to top (docs/architecture.md, "Layers"), and form no cycle.

The graph comes from the source text (tests/layering.py), function-level imports included, so a
lazy import cannot hide a cycle or an upward dependency again. The last two tests feed the checker
the real sources with the old cycles put back, to show that it would catch them.
"""

from __future__ import annotations

from layering import LAYERS, cycles, import_graph, layer_of, module_sources, upward_imports


def test_every_module_has_a_layer():
    for module in module_sources():
        layer_of(module)  # raises for a module outside LAYERS


def test_imports_only_go_down_the_layers():
    assert upward_imports(import_graph(module_sources())) == []


def test_no_import_cycles():
    assert cycles(import_graph(module_sources())) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph(module_sources())
    # `clarion train` imports the trainer inside the command function (the CLI starts without torch)
    assert "clarion.train.loop" in graph["clarion.cli.train"]
    assert "clarion.api" in graph["clarion"]  # clarion.load: a lazy import in the package's __getattr__


def test_a_reintroduced_config_models_cycle_is_caught():
    """The cycle this layout removed: load_config resolving the sample rate through a
    function-level ``from .models import required_sample_rate``."""
    sources = module_sources()
    sources["clarion.config"] += (
        "\n\ndef resolve_sample_rate(cfg):\n"
        "    from .models import required_sample_rate  # models import this module\n"
        "    return required_sample_rate(cfg.model)\n"
    )
    graph = import_graph(sources)
    assert any("clarion.config" in c and "clarion.models" in c for c in cycles(graph))
    assert "clarion.config (base) -> clarion.models (models, objectives)" in upward_imports(graph)


def test_a_reintroduced_manifest_sources_shards_cycle_is_caught():
    """The other one: the manifest reader dispatching to the corpus adapters, which read shards,
    which parsed specs with the adapters' parser."""
    sources = module_sources()
    sources["clarion.data.manifest"] += "\n\ndef _spec(path):\n    from .sources import parse_spec\n    return parse_spec(path)\n"
    sources["clarion.data.shards.reader"] += "\n\ndef _spec(path):\n    from ..sources import parse_spec\n    return parse_spec(path)\n"
    found = cycles(import_graph(sources))
    assert any({"clarion.data.manifest", "clarion.data.sources"} <= set(c) for c in found)
    assert any({"clarion.data.shards.reader", "clarion.data.sources.webdataset"} <= set(c) for c in found)


def test_layers_are_listed_bottom_to_top():
    names = [name for name, _ in LAYERS]
    assert names[0] == "base" and names[-1].startswith("cli")
    assert layer_of("clarion.files") < layer_of("clarion.audio.decode") < layer_of("clarion.data.manifest")
    assert layer_of("clarion.data.open") < layer_of("clarion.models") < layer_of("clarion.train.loop") < layer_of("clarion.cli")
