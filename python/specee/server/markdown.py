"""Markdown to HTML for the chat page's answers, with markdown-it-py (the
CommonMark parser behind Jupyter's and MyST's Markdown) rather than a parser
of our own. Raw HTML in an answer is escaped, not passed through, and
markdown-it refuses javascript:, vbscript: and data: links other than images,
so a model's text cannot run script in the page."""
from __future__ import annotations

from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable("table").enable("strikethrough")


def render_markdown(text: str) -> str:
    """The HTML of `text` (CommonMark, plus tables and ~~strike~~)."""
    return _MD.render(text)
