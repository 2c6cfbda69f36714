"""The governance board: server-rendered pages at /board/ for the people who run governance."""

from __future__ import annotations

from aiohttp import web

from tierline.board import issues as _issues  # noqa: F401  (registers the issue actions)
from tierline.board.pages import board
from tierline.board.render import setup_templates
from tierline.board.routes import BoardRoutes

__all__ = ["install", "routes"]


def routes() -> BoardRoutes:
    """The board's route table (for the isolation matrix and the app)."""
    return board


def install(app: web.Application) -> None:
    """Templates and every board page on the API's app."""
    setup_templates(app)
    board.install(app)
