//! `GET /v1/openapi.json` and a self-contained API reference page at
//! `GET /docs`, rendered from the same document (no CDN, works offline).

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::Value;

use crate::state::AppState;

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_get(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.openapi_json.as_str().to_string(),
    )
}

/// The API reference, as HTML.
#[utoipa::path(get, path = "/docs", tag = "operations", responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub async fn docs_get(State(st): State<AppState>) -> Html<String> {
    Html(render(&st.openapi_json))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn schema_name(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    if let Some(t) = v.get("type") {
        return match t {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
    "object".into()
}

/// Render the reference page from the OpenAPI JSON.
pub fn render(openapi_json: &str) -> String {
    let doc: Value = serde_json::from_str(openapi_json).unwrap_or(Value::Null);
    let mut h = String::new();
    let title = doc
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("API");
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
body{{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}}\
code,pre{{font:13px ui-monospace,monospace;background:#f5f5f5;padding:1px 4px;border-radius:3px}}\
pre{{padding:8px;overflow:auto}}.op{{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}}\
.m{{display:inline-block;min-width:4.5em;font-weight:bold;text-transform:uppercase}}\
.get{{color:#0a7}}.post{{color:#06c}}.patch{{color:#a60}}.put{{color:#a60}}.delete{{color:#c33}}\
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #eee;padding:2px 8px;text-align:left;vertical-align:top}}\
</style></head><body><h1>{t}</h1><p>{d}</p><p>Machine-readable: <a href=\"/v1/openapi.json\">/v1/openapi.json</a></p>",
        t = esc(title),
        d = esc(doc.pointer("/info/description").and_then(Value::as_str).unwrap_or(""))
    );
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        h.push_str("<h2>Endpoints</h2>");
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                let summary = op.get("summary").and_then(Value::as_str).unwrap_or("");
                let _ = write!(
                    h,
                    "<div class=\"op\"><span class=\"m {m}\">{m}</span> <code>{p}</code> — {s}",
                    m = esc(method),
                    p = esc(path),
                    s = esc(summary)
                );
                if let Some(d) = op.get("description").and_then(Value::as_str) {
                    let _ = write!(h, "<p>{}</p>", esc(d));
                }
                if let Some(params) = op.get("parameters").and_then(Value::as_array) {
                    h.push_str("<table><tr><th>parameter</th><th>in</th><th>description</th></tr>");
                    for p in params {
                        let _ = write!(
                            h,
                            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                            esc(p.get("name").and_then(Value::as_str).unwrap_or("")),
                            esc(p.get("in").and_then(Value::as_str).unwrap_or("")),
                            esc(p.get("description").and_then(Value::as_str).unwrap_or(""))
                        );
                    }
                    h.push_str("</table>");
                }
                if let Some(body) = op.pointer("/requestBody/content/application~1json/schema") {
                    let _ = write!(
                        h,
                        "<p>Body: <a href=\"#schema-{n}\">{n}</a></p>",
                        n = esc(&schema_name(body))
                    );
                }
                if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                    h.push_str("<p>Responses: ");
                    for (code, r) in responses {
                        let schema = r
                            .get("content")
                            .and_then(Value::as_object)
                            .and_then(|c| c.values().next())
                            .and_then(|c| c.get("schema"))
                            .map(schema_name);
                        match schema {
                            Some(n) => {
                                let _ = write!(
                                    h,
                                    "<code>{}</code> <a href=\"#schema-{n}\">{n}</a>; ",
                                    esc(code),
                                    n = esc(&n)
                                );
                            }
                            None => {
                                let _ = write!(h, "<code>{}</code>; ", esc(code));
                            }
                        }
                    }
                    h.push_str("</p>");
                }
                h.push_str("</div>");
            }
        }
    }
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        h.push_str("<h2>Schemas</h2>");
        for (name, s) in schemas {
            let pretty = serde_json::to_string_pretty(s).unwrap_or_default();
            let _ = write!(
                h,
                "<h3 id=\"schema-{n}\">{n}</h3><pre>{}</pre>",
                esc(&pretty),
                n = esc(name)
            );
        }
    }
    h.push_str("</body></html>");
    h
}
