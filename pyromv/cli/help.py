"""``pyromv-train --help`` and ``pyromv-eval --help``: every option with its value and a sentence.

The sentences are the first sentences of the options' entries in the ``Attributes`` (or
``Parameters``) section of their dataclass's numpy docstring, read when the help is printed, so
the help cannot fall behind the code: a new field without a docstring entry shows
``(undocumented)`` and fails ``tests/cli/test_help.py``. The values are those of the composed
configuration, so ``pyromv-train model=mmvae --help`` lists MMVAE's options.

The help is Hydra's ``hydra.help.template``, whose text comes from the resolver
``${pyromv_help:train}`` / ``${pyromv_help:eval}`` registered here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: the resolver the help templates call
HELP_RESOLVER = "pyromv_help"
#: what an option without a docstring entry says
UNDOCUMENTED = "(undocumented)"
#: Hydra's own flags, after ours
FLAGS = "\n== Hydra's flags ==\n$FLAGS_HELP"

_SECTION = re.compile(r"^(\S[^\n]*)\n-{3,}\s*$", re.M)
_ROLE = re.compile(r":\w+:`~?([^`]+)`")
_SEE = re.compile(r"As in :class:`~?([\w.]+)`")


_ABBREVIATIONS = ("e.g.", "i.e.", "cf.", "al.", "App.", "Eq.", "Fig.", "Sec.", "vs.", "etc.")


def _clean(text: str, quote: str = "'") -> str:
    """Plain text from reStructuredText: roles to their last name, ``code`` to 'code'."""
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1], text)
    text = text.replace('``"', '"').replace('"``', '"').replace("``", quote)
    return " ".join(text.split())


def first_sentence(text: str) -> str:
    """The first sentence of ``text``: up to a full stop that ends a word other than an
    abbreviation (``e.g.``) and is followed by a capital letter."""
    text = _clean(text)
    for match in re.finditer(r"(?<=[.!?])\s+(?=[A-Z])", text):
        if not text[:match.start()].endswith(_ABBREVIATIONS):
            return text[:match.start()]
    return text


def _entries(doc: str, section: str) -> Iterator[tuple[list[str], str]]:
    """``(names, description)`` of each entry of a numpy docstring section."""
    headers = list(_SECTION.finditer(doc))
    for i, header in enumerate(headers):
        if header.group(1).strip() != section:
            continue
        end = headers[i + 1].start() if i + 1 < len(headers) else len(doc)
        body = doc[header.end():end].splitlines()
        names: list[str] | None = None
        lines: list[str] = []
        continued = False  # the names go on on the next line ("a, b,\n    c")
        for line in body:
            if continued or (line.strip() and not line[:1].isspace()):
                if names is not None and not continued:
                    yield names, "\n".join(lines)
                    names = None
                head = line.strip().split(" : ")[0]
                names = (names or []) + [n.strip() for n in head.split(",") if n.strip()]
                continued, lines = head.endswith(","), []
            elif names is not None:
                lines.append(line)
        if names is not None:
            yield names, "\n".join(lines)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The description of each documented field of a dataclass, from the ``Attributes`` (or
    ``Parameters``) sections of its own and its bases' docstrings (the subclass wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__")
        if not doc:
            continue
        doc = inspect.cleandoc(doc)
        for section in ("Parameters", "Attributes"):
            for names, description in _entries(doc, section):
                other = _SEE.match(description.strip())
                for name in names:
                    if other:  # "As in :class:`PolyFashion`": that class's entry
                        target = getattr(sys.modules.get(klass.__module__), other.group(1).split(".")[-1], None)
                        found = field_docs(target).get(name) if isinstance(target, type) else None
                        if found:
                            docs[name] = found
                            continue
                    if description.strip():
                        docs[name] = description
    return docs


def _value(node: Any) -> str:
    if OmegaConf.is_config(node):
        return json.dumps(OmegaConf.to_container(node, resolve=False))
    return "null" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def option_lines(node: DictConfig, prefix: str = "", skip: tuple[str, ...] = ("defaults", "hydra")) -> list[
        tuple[str, str]]:
    """``(name=value, sentence)`` of every field of the structured config ``node`` and of the
    structured configs nested in it (their names dotted)."""
    cls = OmegaConf.get_type(node)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return []
    docs = field_docs(cls)
    out: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if OmegaConf.is_missing(node, f.name):
            child: Any = "???"
        else:
            child = node._get_node(f.name)
            child = child if isinstance(child, DictConfig) else node[f.name]
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            out.extend(option_lines(child, f"{prefix}{f.name}.", skip=()))
            continue
        out.append((f"{prefix}{f.name}={_value(child)}", first_sentence(docs.get(f.name, "")) or UNDOCUMENTED))
    return out


def _table(rows: list[tuple[str, str]], indent: str = "  ", width: int = 38, columns: int = 118) -> str:
    """Two columns; the right one wrapped to ``columns`` characters under itself."""
    lines = []
    for left, right in rows:
        head = f"{indent}{left}".ljust(len(indent) + width) if len(left) < width else f"{indent}{left}  "
        lines.append(textwrap.fill(right, columns, initial_indent=head, subsequent_indent=" " * (len(indent) + width),
                                   break_on_hyphens=False))
    return "\n".join(lines)


def _intro(module: str) -> str:
    doc = inspect.cleandoc(sys.modules[module].__doc__ or "")
    return textwrap.fill(_clean(doc.split("\n\n")[0], quote=""), 118)


def train_help(cfg: DictConfig, choices: dict[str, str]) -> str:
    """The text of ``pyromv-train --help`` for the composed job ``cfg`` and its group ``choices``."""
    from ..models import registered_models
    from .config import DATA_SOURCES

    model, data = choices.get("model", "mvae"), choices.get("data", "polydigits")
    groups = [
        (f"model={model}", f"The model, one of {', '.join(registered_models())} (docs/models/<name>.md)."),
        (f"data={data}", f"The data set, one of {', '.join(DATA_SOURCES)} (docs/datasets.md)."),
        (f"trainer={choices.get('trainer', 'default')}", "The trainer's options (one set: default)."),
    ]
    return "\n".join([
        _intro("pyromv.cli.train"), "",
        "Usage: pyromv-train [NAME=VALUE ...]   e.g. pyromv-train model=mmvae trainer.epochs=20 missing_rate=0.5",
        "A bad option ends in one line on stderr and exit status 2; --debug shows the traceback.", "",
        "== Groups (NAME=CHOICE) ==", _table(groups), "",
        f"== Options (NAME=VALUE; model.* and data.* are those of model={model} and data={data}) ==",
        _table(option_lines(cfg)),
    ])


def eval_help(cfg: DictConfig) -> str:
    """The text of ``pyromv-eval --help``."""
    return "\n".join([
        _intro("pyromv.cli.eval"), "",
        "Usage: pyromv-eval run_dir=<a pyromv-train run directory> [NAME=VALUE ...]",
        "   e.g. pyromv-eval run_dir=outputs/2024-01-01/12-00-00 num_particles=5000 push_to_hub=me/my-model", "",
        "== Options (NAME=VALUE) ==", _table(option_lines(cfg)),
    ])


def _help(kind: str, *, _root_: DictConfig) -> str:
    cfg = _root_
    choices: dict[str, str] = {}
    if "hydra" in cfg:
        found = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
        choices = {k: v for k, v in (OmegaConf.to_container(found) if found is not None else {}).items()
                   if isinstance(v, str)}
    text = train_help(cfg, choices) if kind == "train" else eval_help(cfg)
    return text.replace("$", "$$") + "\n" + FLAGS  # Hydra fills the template with string.Template


#: ``hydra.help`` of the commands (Hydra's ``hydra/help`` config group)
TEMPLATES = {kind: {"template": f"${{{HELP_RESOLVER}:{kind}}}"} for kind in ("train", "eval")}
OmegaConf.register_new_resolver(HELP_RESOLVER, _help, replace=True)
