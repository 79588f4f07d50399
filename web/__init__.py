"""`steplog ui`: the web app over a steplog database (Starlette, served by uvicorn).

    from steplog.web import Config, create_app

    app = create_app(Config("steplog.db"))

Needs the `ui` extra (starlette, uvicorn): pip install 'steplog[ui]'.
"""

from steplog.web.app import Config, create_app

__all__ = ["Config", "create_app"]
