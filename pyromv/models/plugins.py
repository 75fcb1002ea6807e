"""Models from outside pyromv: modules named by ``PYROMV_PLUGINS`` and ``pyromv.models`` entry points.

A model registered with :func:`~pyromv.models.register_model` in a user's module is known to the
command line (``pyromv-train model=<name>``) and to :func:`~pyromv.models.load_model` once that
module is imported. Two ways to have it imported:

* ``PYROMV_PLUGINS=my_models,lab.fusions pyromv-train model=mine``: comma-separated module
  names, importable from the working directory or ``sys.path``;
* an installed package declaring an entry point in the group ``pyromv.models``
  (``[project.entry-points."pyromv.models"] mine = "my_package.models"``).

Plugins are imported once, the first time a registry lookup needs them.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

#: Environment variable listing plugin modules, comma-separated.
PLUGINS_VARIABLE = "PYROMV_PLUGINS"
#: Entry-point group of installed plugin packages.
ENTRY_POINT_GROUP = "pyromv.models"

_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """Module names listed in ``PYROMV_PLUGINS`` (empty entries ignored)."""
    return [name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()]


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; return the names imported by this call.

    Raises
    ------
    ImportError
        Naming the plugin and where it was listed, when a module cannot be imported.
    """
    done = []
    for name in plugin_modules():
        if name in _loaded:
            continue
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.append(cwd)
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"cannot import the pyromv plugin {name!r} listed in {PLUGINS_VARIABLE}: "
                              f"{err}") from err
        finally:
            if added:
                sys.path.remove(cwd)
        _loaded.add(name)
        done.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {point.name}={point.value}"
        if key in _loaded:
            continue
        try:
            point.load()
        except ImportError as err:
            raise ImportError(f"cannot import the pyromv plugin {point.value!r} (entry point "
                              f"{point.name!r} in group {ENTRY_POINT_GROUP!r}): {err}") from err
        _loaded.add(key)
        done.append(point.value)
    return done
