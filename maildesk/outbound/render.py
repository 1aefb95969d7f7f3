"""Templates to text: Jinja2 in its sandbox, strict about undefined names.

A notification is `templates/<language>/<name>.txt.j2` with two blocks,
`subject` and `body`, and optionally `<name>.html.j2` with a `body` block,
which is autoescaped. Templates get plain data (dicts and strings) only.
Jinja2 checks file modification times, so edits apply without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from maildesk.config import LANGUAGES


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    language: str


class Renderer:
    def __init__(self, path: Path | str, default_language: str) -> None:
        self.path = Path(path)
        self.default_language = default_language
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(self.path)),
            undefined=StrictUndefined,
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),
            auto_reload=True,
            keep_trailing_newline=True,
            trim_blocks=True,
        )

    def _languages(self, language: str | None) -> list[str]:
        wanted = [language, self.default_language, *LANGUAGES]
        return list(dict.fromkeys(lang for lang in wanted if lang))

    def render(self, name: str, language: str | None, context: dict[str, Any]) -> Rendered:
        """Render in `language`, falling back to the default language, then any shipped one."""
        for lang in self._languages(language):
            try:
                text_template = self.env.get_template(f"{lang}/{name}.txt.j2")
            except TemplateNotFound:
                continue
            html = self._html(lang, name, context)
            subject = " ".join(_block(text_template, "subject", context).split())
            return Rendered(
                subject, _block(text_template, "body", context).strip() + "\n", html, lang
            )
        raise TemplateNotFound(f"{name}.txt.j2 in any of {self._languages(language)}")

    def _html(self, lang: str, name: str, context: dict[str, Any]) -> str | None:
        try:
            template = self.env.get_template(f"{lang}/{name}.html.j2")
        except TemplateNotFound:
            return None
        return _block(template, "body", context)


def _block(template: Template, block: str, context: dict[str, Any]) -> str:
    render = template.blocks.get(block)
    if render is None:
        raise TemplateNotFound(f"{template.name} has no {{% block {block} %}}")
    # Top-level {% set %} names (e.g. a table of labels) are visible in blocks.
    exported = {
        name: value
        for name, value in vars(template.make_module(context)).items()
        if not name.startswith("_")
    }
    return "".join(render(template.new_context({**context, **exported})))
