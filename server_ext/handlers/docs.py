"""``/openapi.json`` and the Swagger UI at ``/docs`` (assets served locally, works offline)."""

from __future__ import annotations

import functools
import json

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.server_ext.handlers.base import ScopeHandler

SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Scope API</title>
  <link rel="stylesheet" href="{static}swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{static}swagger-ui-bundle.js"></script>
  <script src="{static}swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{spec}",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null
    }});
  </script>
</body>
</html>
"""


@functools.cache
def openapi_document() -> str:
    from scope.server_ext.routes import HANDLERS
    from scope.server_ext.openapi import build_openapi

    return json.dumps(build_openapi(HANDLERS))


class OpenApiHandler(ScopeHandler):
    pattern = "/openapi.json"

    @allow_unauthenticated
    def get(self) -> None:
        self.finish(openapi_document())


class SwaggerHandler(ScopeHandler):
    pattern = r"/docs/?"

    @property
    def content_security_policy(self) -> str:
        return "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"

    @allow_unauthenticated
    def get(self) -> None:
        base = self.base_url
        page = SWAGGER_PAGE.format(static=f"{base}docs/static/", spec=f"{base}openapi.json")
        self.finish(page, set_content_type="text/html; charset=utf-8")
