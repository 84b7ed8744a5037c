"""The API documentation page at ``/docs``: plain HTML rendered from the app's OpenAPI schema.

FastAPI's default ``/docs`` is Swagger UI, whose JavaScript and CSS come from a CDN: offline
(a hospital network, a laptop on a train) it is a blank page. This page is rendered on the
server from the same schema, with one stylesheet from this package and no script, so it works
with no network at all. It lists every operation with its summary, description, request
fields (type, default, whether required, description), responses with their fields, and a
``curl`` example; ``/openapi.json`` stays available for tools.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_CODE = re.compile(r"`([^`]+)`")


def _text(value: Any) -> str:
    """Escaped text, with Markdown `code` spans as <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(str(value or ""), quote=False))


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/components/schemas/"):
        return spec.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
    return schema


def _type_name(schema: dict[str, Any], spec: dict[str, Any]) -> str:
    """A short type: "string", "array of ImageResult", "number | null", "one of: a, b"."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "enum" in schema:
        return "one of: " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type_name(s, spec) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        items = schema.get("items", {})
        if "prefixItems" in schema:
            return "[" + ", ".join(_type_name(s, spec) for s in schema["prefixItems"]) + "]"
        return f"array of {_type_name(items, spec)}"
    if kind == "string" and (schema.get("format") == "binary" or "contentMediaType" in schema):
        return "file"
    if kind == "object" and "additionalProperties" in schema:
        return f"object of {_type_name(schema['additionalProperties'], spec)}"
    return str(kind)


def _fields_table(schema: dict[str, Any], spec: dict[str, Any]) -> str:
    schema = _resolve(schema, spec)
    props = schema.get("properties", {})
    if not props:
        return f"<p>{_text(_type_name(schema, spec))}</p>"
    required = set(schema.get("required", []))
    rows = []
    for name, prop in props.items():
        default = ""
        if "default" in prop and prop["default"] is not None:
            default = f" (default <code>{html.escape(json.dumps(prop['default']))}</code>)"
        need = "required" if name in required else "optional"
        rows.append(
            f"<tr><td><code>{html.escape(name)}</code></td>"
            f"<td>{_text(_type_name(prop, spec))}</td><td>{need}{default}</td>"
            f"<td>{_text(prop.get('description', prop.get('title', '')))}</td></tr>"
        )
    return (
        '<table class="fields"><thead><tr><th>field</th><th>type</th><th></th>'
        f"<th>meaning</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _curl(method: str, path: str, op: dict[str, Any], spec: dict[str, Any], base: str) -> str:
    parts = ["curl"]
    if method != "get":
        parts.append(f"-X {method.upper()}")
    body = op.get("requestBody", {}).get("content", {})
    form = body.get("multipart/form-data", {}).get("schema")
    if form:
        for name, prop in _resolve(form, spec).get("properties", {}).items():
            kind = _type_name(prop, spec)
            if "file" in kind:
                parts.append(f"-F {name}=@view1.png -F {name}=@view2.dcm")
            elif name == "part":
                parts.append(f"-F {name}=XR_WRIST")
    return " ".join([*parts, f"{base}{path}"])


def render_docs(spec: dict[str, Any], base_url: str) -> str:
    """The whole page as one HTML string (the stylesheet is /static/docs.css)."""
    info = spec.get("info", {})
    schemas = spec.get("components", {}).get("schemas", {})
    sections, nav = [], []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            anchor = f"{method}-{path}".replace("/", "-").strip("-")
            nav.append(
                f'<li><a href="#{anchor}"><span class="method">{method.upper()}</span> '
                f"{html.escape(path)}</a> {_text(op.get('summary', ''))}</li>"
            )
            out = [
                f'<section class="op" id="{anchor}"><h2><span class="method">{method.upper()}'
                f"</span> <code>{html.escape(path)}</code> {_text(op.get('summary', ''))}</h2>",
                f"<p>{_text(op.get('description', ''))}</p>",
            ]
            params = op.get("parameters", [])
            if params:
                rows = "".join(
                    f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p.get('in', '')}"
                    f"</td><td>{_text(_type_name(p.get('schema', {}), spec))}</td>"
                    f"<td>{_text(p.get('description', ''))}</td></tr>"
                    for p in params
                )
                out.append(
                    f'<h3>Parameters</h3><table class="fields"><tbody>{rows}</tbody></table>'
                )
            for media, content in op.get("requestBody", {}).get("content", {}).items():
                out.append(f"<h3>Request body <small>{html.escape(media)}</small></h3>")
                out.append(_fields_table(content.get("schema", {}), spec))
            out.append('<h3>Responses</h3><dl class="responses">')
            for code, response in op.get("responses", {}).items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                what = (
                    f' &rarr; <a href="#schema-{_type_name(schema, spec)}">'
                    f"{_type_name(schema, spec)}</a>"
                    if schema and "$ref" in schema
                    else ""
                )
                out.append(
                    f"<dt><code>{html.escape(code)}</code>{what}</dt>"
                    f"<dd>{_text(response.get('description', ''))}</dd>"
                )
            out.append("</dl>")
            out.append(
                f'<h3>Example</h3><pre class="example">'
                f"{html.escape(_curl(method, path, op, spec, base_url))}</pre></section>"
            )
            sections.append("".join(out))
    models = [
        f'<section class="schema" id="schema-{html.escape(name)}"><h3>{html.escape(name)}</h3>'
        f"{_fields_table(schema, spec)}</section>"
        for name, schema in schemas.items()
        if not name.startswith(("Body_", "HTTPValidationError", "ValidationError"))
    ]
    title = html.escape(info.get("title", "API"))
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/docs.css">
</head>
<body>
<main class="docs">
  <h1>{title} API <small>version {html.escape(str(info.get("version", "")))}</small></h1>
  <p class="summary">{_text(info.get("summary", ""))}</p>
  <p>{_text(info.get("description", ""))}</p>
  <p>Every error is JSON <code>{{"detail": "&lt;plain words naming the file&gt;"}}</code>.
    Machine-readable schema: <a href="/openapi.json">/openapi.json</a> &middot;
    the page for people: <a href="/">/</a>. This page needs no internet connection.</p>
  <nav><h2>Endpoints</h2><ul>{"".join(nav)}</ul></nav>
  {"".join(sections)}
  <h2 id="schemas">Response fields</h2>
  {"".join(models)}
</main>
</body>
</html>
"""
