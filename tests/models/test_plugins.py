"""Models from outside pyromv: ``PYROMV_PLUGINS`` modules and entry points reach the registry and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyromv.models import load_model, registry
from pyromv.models import plugins as plugin_module

PLUGIN = textwrap.dedent('''
    from pyromv.models import MVAE, MVAEConfig, register_model


    @register_model("{name}")
    class PluginVAE(MVAE):
        """An MVAE under another name, from a user's module."""

        config_class = MVAEConfig
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module ``user_models_<n>`` in a temporary working directory, listed in PYROMV_PLUGINS."""
    name = f"plugin_vae_{os.getpid()}"
    module = f"user_models_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(plugin_module.PLUGINS_VARIABLE, module)
    yield name, module
    registry._MODELS.pop(name, None)
    plugin_module._loaded.discard(module)
    sys.modules.pop(module, None)


def test_a_plugin_module_is_imported_on_lookup(plugin):
    name, module = plugin
    assert name not in registry._MODELS
    cls = registry.get_model_class(name)
    assert cls.__module__ == module and cls.name == name
    assert name in registry.registered_models()
    assert plugin_module.load_plugins() == []  # once only


def test_an_unknown_plugin_is_a_clear_import_error(monkeypatch):
    monkeypatch.setenv(plugin_module.PLUGINS_VARIABLE, "no_such_module_for_pyromv")
    with pytest.raises(ImportError, match="no_such_module_for_pyromv.*PYROMV_PLUGINS"):
        registry.get_model_class("not-registered-anywhere")
    plugin_module._loaded.discard("no_such_module_for_pyromv")


def test_unknown_model_still_lists_the_registered_ones(monkeypatch):
    monkeypatch.delenv(plugin_module.PLUGINS_VARIABLE, raising=False)
    with pytest.raises(ValueError, match="unknown model 'nope'.*mvae"):
        registry.get_model_class("nope")


def test_the_command_line_trains_and_reloads_a_plugin_model(plugin, tmp_path):
    """``PYROMV_PLUGINS=<module> pyromv-train model=<name>``, then the saved model loads back."""
    name, _ = plugin
    exe = shutil.which("pyromv-train") or str(Path(sys.executable).with_name("pyromv-train"))
    out = tmp_path / "run"
    done = subprocess.run(
        [exe, f"model={name}", "trainer.epochs=1", "trainer.progress=false", "model.latent_dim=4",
         "data.hidden_dim=16", "evaluate=false", "plot_rows=2", f"hydra.run.dir={out}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "model" / "config.json").read_text())["model"] == name
    model = load_model(out / "model")  # the registry imports the plugin again if needed
    assert type(model).name == name
