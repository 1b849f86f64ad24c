"""Sphinx configuration for the gradchain documentation.

Build, from the repository root, with gradchain importable (installed, or
built in place with ``python setup.py build_ext --inplace``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

No intersphinx: the build needs no network.
"""
import importlib
import os
import sys

from sphinx.util import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    gradchain = importlib.import_module("gradchain")
except ImportError:
    # not installed: the in-place build of this checkout, if there is one
    sys.path.insert(0, ROOT)
    sys.modules.pop("gradchain", None)
    gradchain = importlib.import_module("gradchain")

project = "gradchain"
author = "the gradchain authors"
copyright = "the gradchain authors; BSD-3-Clause"
release = gradchain.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
]

exclude_patterns = ["_build"]
root_doc = "index"

html_theme = "furo"
html_title = f"gradchain {release}"

autodoc_member_order = "bysource"
# The docstrings' Parameters sections give the types; the signatures stay short.
autodoc_typehints = "none"

# autodoc's :members: lists a class's members once; numpydoc's own member
# tables would list them a second time.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Types in the Parameters sections are prose ("array_like, shape (n,)"), not
# cross-reference targets.
numpydoc_xref_param_type = False

# ---------------------------------------------------------------------------
# Markup fixes for docstrings of modules this documentation does not own.
#
# Each entry is (object's full name, exact text in its docstring, replacement).
# The text is ASCII math that reST reads as markup (|x| as a substitution,
# *shape as the start of emphasis); the replacement puts it in a literal.
# Nothing else is touched, and an entry whose text is no longer in its
# docstring is reported as a warning (so, under -W, the build fails and says
# which entry to delete): once the docstring itself is fixed, delete its
# entry here.
DOCSTRING_FIXES: list = []   # (object, old text, new text): none needed now

_logger = logging.getLogger(__name__)
_fixes_used = set()


def _full_name(obj):
    """Where obj is defined (the reference documents it as gradchain.X)."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _fix_docstring(app, what, name, obj, options, lines):
    full = _full_name(obj)
    for i, (target, old, new) in enumerate(DOCSTRING_FIXES):
        if full != target:
            continue
        for j, line in enumerate(lines):
            if old in line:
                lines[j] = line.replace(old, new)
                _fixes_used.add(i)


def _check_fixes(app, env):
    for i, (target, old, _) in enumerate(DOCSTRING_FIXES):
        if i not in _fixes_used:
            _logger.warning(f"docs/conf.py DOCSTRING_FIXES: {target}'s docstring no longer "
                            f"contains {old!r}; delete that entry")




# ---------------------------------------------------------------------------
# ``.. gradchain-headline::`` — the README's headline table (written there by
# bench/report.py from the saved sessions), converted from its Markdown at
# build time, so the benchmarks page never holds a hand-copied table.
from docutils import nodes  # noqa: E402
from docutils.statemachine import StringList  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402

README_BEGIN = "<!-- headline table:"
README_END = "<!-- end of headline table -->"


def _md_inline(text):
    """The Markdown of the table's cells as reST: `code` -> ``code``,
    [text](link) -> text; **bold** and *emphasis* are the same in both."""
    import re
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


class HeadlineTable(SphinxDirective):
    has_content = False

    def run(self):
        path = os.path.join(ROOT, "README.md")
        self.env.note_dependency(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        a, b = text.find(README_BEGIN), text.find(README_END)
        if a < 0 or b < a:
            raise self.error(f"{path}: the headline table's markers were not found")
        block = text[a:b].splitlines()[1:]          # without the marker line
        out, table = [], []

        def flush_table():
            if not table:
                return
            out.extend([".. list-table::", "   :header-rows: 1", "   :widths: 35 20 45", ""])
            for row in table:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                for i, cell in enumerate(cells):
                    out.append(("   * - " if i == 0 else "     - ") + _md_inline(cell))
            out.append("")
            table.clear()

        for line in block + [""]:
            if line.startswith("|"):
                if not set(line) <= set("|-: "):     # not the |---| rule
                    table.append(line)
                continue
            flush_table()
            # prose: the intro, the status line and its bullets
            out.append(_md_inline(line))
            if line.strip() and not line.startswith("- "):
                out.append("")
        out.append("")
        node = nodes.container()
        self.state.nested_parse(StringList(out, source=path), self.content_offset, node)
        return node.children


def setup(app):
    # numpydoc rewrites a docstring at priority 500 (the default); the markup
    # fixes run after it, on the lines it produced
    app.connect("autodoc-process-docstring", _fix_docstring, priority=600)
    app.connect("env-check-consistency", _check_fixes)
    app.add_directive("gradchain-headline", HeadlineTable)
    # DOCSTRING_FIXES counts its matches in this process: no parallel reading
    return {"parallel_read_safe": False, "parallel_write_safe": True}
