"""Templates to text: Jinja2 in its sandbox, strict about undefined names.

A notification is `templates/<language>/<name>.txt.j2` with two blocks,
`subject` and `body`, and optionally `<name>.html.j2` with a `body` block,
which is autoescaped. Templates get plain data (dicts and strings) only.

This module also decides what happens when an admin's edit is broken. Edits
apply without a restart, within a second (maildesk/template_files.py); the
Renderer keeps the last version of each file that rendered, and when a newer
one fails to compile or to render it logs `file:line: message` to
`maildesk.templates` and renders with that last good version instead (or,
in a fresh process, with the copy shipped in the package). A broken edit
never stops mail. A `strict` Renderer (previews, send-test) raises instead.

`check` decides what an admin is told is broken: syntax errors, names and
`name.key` lookups no sample context offers, and failures while rendering each
sample; each as `file:line: message`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateRuntimeError,
    TemplateSyntaxError,
    meta,
    nodes,
)
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from maildesk.clock import Clock, SystemClock
from maildesk.config import LANGUAGES, PACKAGE_TEMPLATES
from maildesk.template_files import FreshLoader

log = logging.getLogger("maildesk.templates")

T = TypeVar("T")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    language: str
    # The context names the templates looked up while rendering this: a render that
    # read no `recipient` is the same for every recipient (Notifier.notify_each).
    reads: frozenset[str] = frozenset()


# The context key of a render's set of looked-up names: not an identifier, so no
# template can name it.
_READS = "maildesk:reads"


class _NotingContext(Context):
    """A context that notes each name its template looks up. Every lookup of a
    template (its own, an include's, a pass_context function's) goes through
    `resolve_or_missing`, the method Jinja offers for custom lookups."""

    def resolve_or_missing(self, key: str) -> Any:
        reads = self.parent.get(_READS)
        if reads is not None:
            reads.add(key)
        return super().resolve_or_missing(key)


class _Environment(SandboxedEnvironment):
    context_class = _NotingContext


class MissingBlock(TemplateRuntimeError):
    """A template lacks a block the code renders (e.g. `subject`)."""

    def __init__(self, filename: str | None, block: str) -> None:
        super().__init__(f"no {{% block {block} %}}")
        self.filename = filename
        self.lineno = 1


def make_environment(path: Path | str, clock: Clock | None = None) -> SandboxedEnvironment:
    """The one Jinja2 setup for notifications, shared by the daemon and the admin commands.
    `clock` times the looks for edits (template_files.py)."""
    return _Environment(
        loader=FreshLoader(str(path), clock or SystemClock()),
        undefined=StrictUndefined,
        autoescape=lambda name: bool(name and name.endswith(".html.j2")),
        auto_reload=True,
        keep_trailing_newline=True,
        trim_blocks=True,
    )


class Renderer:
    def __init__(
        self,
        path: Path | str,
        default_language: str,
        *,
        strict: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.default_language = default_language
        self.strict = strict
        self.clock = clock or SystemClock()
        self.use_path(path)

    def use_path(self, path: Path | str) -> None:
        """Render from another folder from now on (a reload changed `[templates] path`)."""
        self.path = Path(path)
        self.env = make_environment(self.path, self.clock)
        assert isinstance(self.env.loader, FreshLoader)
        self._loader = self.env.loader
        # Template name -> the last compiled version that rendered without error.
        self._good: dict[str, Template] = {}
        shipped = PACKAGE_TEMPLATES.resolve() != self.path.resolve()
        self._shipped = (
            make_environment(PACKAGE_TEMPLATES, self.clock) if shipped and not self.strict else None
        )

    def _languages(self, language: str | None) -> list[str]:
        wanted = [language, self.default_language, *LANGUAGES]
        return list(dict.fromkeys(lang for lang in wanted if lang))

    def render(self, name: str, language: str | None, context: dict[str, Any]) -> Rendered:
        """Render in `language`, falling back to the default language, then any shipped one."""
        failures: list[Exception] = []
        reads: set[str] = set()
        context = {**context, _READS: reads}

        def text_parts(template: Template) -> tuple[str, str]:
            subject, body = render_blocks(template, ("subject", "body"), context)
            return " ".join(subject.split()), body.strip() + "\n"

        for lang in self._languages(language):
            try:
                parts = self._use(f"{lang}/{name}.txt.j2", text_parts)
                if parts is None:
                    continue
            except Exception as exc:
                if self.strict:
                    raise
                # A mail in another language beats no mail at all.
                failures.append(exc)
                continue
            try:
                html = self._use(
                    f"{lang}/{name}.html.j2", lambda t: render_block(t, "body", context)
                )
            except Exception:
                if self.strict:
                    raise
                html = None  # logged by _use; the text part alone is a complete mail
            return Rendered(parts[0], parts[1], html, lang, frozenset(reads))
        if failures:
            raise failures[0]
        raise TemplateNotFound(f"{name}.txt.j2 in any of {self._languages(language)}")

    def _use(self, name: str, render: Callable[[Template], T]) -> T | None:
        """`render` the current version of `name`, else its last good one; None if absent."""
        if self._loader.missing(name):  # e.g. an HTML part nobody wrote: spares an exception
            return None
        try:
            current: Template | None = self.env.get_template(name)
        except TemplateNotFound:
            self._good.pop(name, None)  # removed on purpose, e.g. an HTML part
            return None
        except TemplateSyntaxError as exc:
            if self.strict:
                raise
            error: Exception = exc
            current = None
        if current is not None:
            try:
                result = render(current)
            except Exception as exc:
                if self.strict:
                    raise
                error = exc
            else:
                self._good[name] = current
                return result
        for label, fallback in self._fallbacks(name, current):
            try:
                result = render(fallback)
            except Exception:  # noqa: S112 - the next fallback may do; the error is logged below
                continue
            log.error("%s; rendered %s with its %s version", describe(error), name, label)
            return result
        log.error("%s; %s has no version that renders", describe(error), name)
        raise error

    def _fallbacks(self, name: str, current: Template | None) -> list[tuple[str, Template]]:
        found = []
        good = self._good.get(name)
        if good is not None and good is not current:
            found.append(("last good", good))
        if self._shipped is not None:
            try:
                found.append(("shipped", self._shipped.get_template(name)))
            except (TemplateNotFound, TemplateSyntaxError):
                pass
        return found


def render_block(template: Template, block: str, context: dict[str, Any]) -> str:
    """One block of `template`; errors carry the template's file and line."""
    return render_blocks(template, (block,), context)[0]


def render_blocks(
    template: Template, blocks: tuple[str, ...], context: dict[str, Any]
) -> list[str]:
    """Several blocks of `template`, running its top level once for all of them."""
    renders = []
    for block in blocks:
        render = template.blocks.get(block)
        if render is None:
            raise MissingBlock(template.filename, block)
        renders.append(render)
    try:
        # Top-level {% set %} names (e.g. a table of labels) are visible in blocks, as when
        # Jinja renders the whole template: the top level runs first, in the context the
        # blocks then render in, but with its blocks left out (`make_module` would have
        # rendered each of them there, then again here).
        shared = template.new_context(context)
        own, shared.blocks = shared.blocks, {name: [_no_block] for name in shared.blocks}
        for _ in template.root_render_func(shared):
            pass
        shared.blocks = own
        return ["".join(render(shared)) for render in renders]
    except Exception:
        # What Template.render does: rewrite the traceback so its frames carry
        # template file names and line numbers (see error_location).
        template.environment.handle_exception()
        raise  # handle_exception always raises; this keeps type checkers informed


def _no_block(_context: Context) -> Iterator[str]:
    return iter(())


def error_location(exc: BaseException) -> tuple[str, int | None]:
    """The template file and line an error points at, as far as it can be known."""
    filename = getattr(exc, "filename", None)
    if isinstance(filename, str):
        return filename, getattr(exc, "lineno", None)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return frame.filename, frame.lineno
    return "?", None


def describe(exc: BaseException) -> str:
    """`file:line: message` for a template error."""
    filename, line = error_location(exc)
    message = (exc.message if isinstance(exc, TemplateSyntaxError) else str(exc)) or repr(exc)
    if filename == "?":
        return message
    return f"{filename}:{line}: {message}" if line else f"{filename}: {message}"


# -- what exists and what is broken (`maildesk templates list` / `check`) ----------


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    parts: dict[str, tuple[str, ...]]  # language -> ("text", "html") present


def discover(path: Path | str) -> list[TemplateInfo]:
    """Every notification template under `path` (<language>/<name>.{txt,html}.j2)."""
    found: dict[str, dict[str, list[str]]] = {}
    for file in sorted(Path(path).glob("*/*.j2")):
        for suffix, part in ((".txt.j2", "text"), (".html.j2", "html")):
            if file.name.endswith(suffix):
                name = file.name.removesuffix(suffix)
                found.setdefault(name, {}).setdefault(file.parent.name, []).append(part)
    return [
        TemplateInfo(name, {lang: tuple(sorted(p, reverse=True)) for lang, p in langs.items()})
        for name, langs in sorted(found.items())
    ]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


def check(path: Path | str, samples: Callable[[str, str], list[dict[str, Any]]]) -> list[Problem]:
    """Every problem of every template under `path`, each once.

    `samples(name, language)` gives the contexts a template must render with.
    Names and `name.key` lookups that no sample offers are found in the source,
    so a typo in a branch no sample takes is reported too.
    """
    env = make_environment(path)
    problems: list[Problem] = []
    for info in discover(path):
        for lang, parts in info.parts.items():
            contexts = samples(info.name, lang)
            for part in parts:
                relative = f"{lang}/{info.name}.{'txt' if part == 'text' else 'html'}.j2"
                problems += _check_file(env, Path(path) / relative, relative, part, contexts)
            if "text" not in parts:
                file = str(Path(path) / f"{lang}/{info.name}.html.j2")
                problems.append(Problem(file, None, "no .txt.j2 beside it: never sent"))
    return list(dict.fromkeys(problems))


def _check_file(
    env: SandboxedEnvironment,
    file: Path,
    relative: str,
    part: str,
    contexts: list[dict[str, Any]],
) -> list[Problem]:
    try:
        ast = env.parse(file.read_text(encoding="utf-8"), relative, str(file))
        template = env.get_template(relative)
    except TemplateSyntaxError as exc:
        return [Problem(str(file), exc.lineno, exc.message or "syntax error")]
    problems = _unknown_names(ast, str(file), contexts)
    # A line already reported by name needs no second, vaguer report from rendering.
    reported = {(p.file, p.line) for p in problems}
    blocks = ("subject", "body") if part == "text" else ("body",)
    for context in contexts:
        for block in blocks:
            try:
                out = render_block(template, block, context)
            except Exception as exc:
                where, line = error_location(exc)
                if (where, line) not in reported:
                    problems.append(Problem(where, line, str(exc) or type(exc).__name__))
                continue
            if block == "subject" and not out.strip():
                problems.append(Problem(str(file), None, "the subject renders empty"))
    return problems


def _unknown_names(ast: nodes.Template, file: str, contexts: list[dict[str, Any]]) -> list[Problem]:
    given: dict[str, list[Any]] = {}
    for context in contexts:
        for variable, value in context.items():
            given.setdefault(variable, []).append(value)
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    free = meta.find_undeclared_variables(ast) - assigned
    problems = []
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in free and node.name not in given:
            offered = ", ".join(sorted(given))
            message = f"'{node.name}' is undefined (this template gets: {offered})"
            problems.append(Problem(file, node.lineno, message))
    for lookup in ast.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(lookup, nodes.Getattr | nodes.Getitem)
        target, key = lookup.node, _key(lookup)
        if not (isinstance(target, nodes.Name) and target.name in free and key is not None):
            continue
        dicts = [v for v in given.get(target.name, []) if isinstance(v, dict)]
        if dicts and all(key not in d for d in dicts):
            keys = ", ".join(sorted({k for d in dicts for k in d}))
            message = f"'{target.name}.{key}' is undefined ({target.name} has: {keys})"
            problems.append(Problem(file, lookup.lineno, message))
    return problems


def _key(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    arg = node.arg
    return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None
