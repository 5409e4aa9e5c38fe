//! The OpenAPI 3 description of the service, served at `/openapi.json`.

use serde_json::{json, Value};

fn error_responses() -> Value {
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({"400": err, "401": err, "413": err, "503": err, "504": err, "500": err})
}

fn embeddings_response() -> Value {
    json!({"description": "embeddings in input order", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Embeddings"}}}})
}

fn op(summary: &str, body: Option<Value>, ok: Value) -> Value {
    let mut responses = error_responses();
    responses["200"] = ok;
    let mut o = json!({"summary": summary, "responses": responses});
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": b});
    }
    o
}

fn json_body(schema: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
}

/// The document for a server of `model`; `auth` adds the bearer scheme.
pub(crate) fn document(model: &str, auth: bool) -> Value {
    let plain = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "pe serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Perception Encoder embeddings and zero-shot classification; model {model}.")},
        "paths": {
            "/health": {"get": {"summary": "The process is up.", "security": [], "responses": {"200": plain("ok")}}},
            "/ready": {"get": {"summary": "The model is loaded.", "responses": {"200": plain("ready"), "503": plain("not ready")}}},
            "/v1/models": {"get": {"summary": "The served model, OpenAI-style.", "responses": {"200": plain("model list")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": plain("OpenAPI 3 document")}}},
            "/v1/embeddings": {"post": op("OpenAI-compatible embeddings; data:image/...;base64 inputs are images.", Some(json_body("OpenAiEmbeddingsRequest")),
                json!({"description": "OpenAI embedding list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiEmbeddings"}}}}))},
            "/embed/text": {"post": op("Text embeddings.", Some(json_body("TextRequest")), embeddings_response())},
            "/embed/image": {"post": op("Image embeddings from base64 (JSON) or file uploads (multipart).", Some(json!({
                "application/json": {"schema": {"$ref": "#/components/schemas/ImageRequest"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "normalize": {"type": "boolean", "default": true}, "layer": {"type": "integer", "default": -1}}}}
            })), embeddings_response())},
            "/embed/video": {"post": op("Video embeddings: mean of sampled frame embeddings.", Some(json!({
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "frames": {"type": "integer", "default": 8},
                    "sampling": {"type": "string", "enum": ["benchmark", "demo"], "default": "benchmark"},
                    "normalize": {"type": "boolean", "default": true}}}}
            })), embeddings_response())},
            "/search": {"post": op("Search the index (pe serve --index): text in rclip's grammar, images, indexed files by path, weighted.", Some(json!({
                "application/json": {"schema": {"type": "object", "properties": {
                    "query": {"type": "string", "description": "text terms: `2:golden retriever + pool - snow`"},
                    "terms": {"type": "array", "items": {"type": "object", "properties": {
                        "text": {"type": "string"}, "image": {"type": "string", "description": "base64 or data URL"},
                        "path": {"type": "string", "description": "an indexed file"}, "weight": {"type": "number", "default": 1}}}},
                    "top_k": {"type": "integer", "default": 10, "maximum": 1000}, "threshold": {"type": "number"},
                    "under": {"type": "string", "description": "only files under this absolute folder"},
                    "exact": {"type": "boolean", "default": false}}}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "query": {"type": "string"}, "top_k": {"type": "integer"}, "threshold": {"type": "number"},
                    "under": {"type": "string"}, "exact": {"type": "boolean"}}}}
            })), plain("results: rank, path, score (cosine), best first"))},
            "/similar": {"get": {"summary": "The indexed files nearest an indexed file (`path`, `top_k`, `exact`).",
                "responses": {"200": plain("results"), "404": plain("not in the index")}}},
            "/thumb": {"get": {"summary": "A JPEG thumbnail of an indexed file (`path`, `size` 16..=512).",
                "responses": {"200": {"description": "image/jpeg", "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}, "404": plain("not in the index")}}},
            "/features": {"post": op("Dense token features: per image the patch grid (H/p, W/p, C) and the class token.", Some(json!({
                "application/json": {"schema": {"type": "object", "required": ["images"], "additionalProperties": false, "properties": {
                    "images": {"type": "array", "items": {"type": "string"}}, "layer": {"type": "integer", "default": -1},
                    "norm": {"type": "boolean", "default": false}, "encoding_format": {"type": "string", "enum": ["float", "base64"]}}}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "layer": {"type": "integer"}, "norm": {"type": "boolean"}, "encoding_format": {"type": "string"}}}}
            })), plain("grid, width, and per image cls_token and patch_tokens"))},
            "/classify": {"post": op("Zero-shot classification with prompt ensembling.", Some(json_body("ClassifyRequest")),
                json!({"description": "top labels per image", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ClassifyResponse"}}}}))},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "integer"}}}}},
            "Embeddings": {"type": "object", "properties": {"model": {"type": "string"},
                "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
            "TextRequest": {"type": "object", "required": ["texts"], "additionalProperties": false, "properties": {
                "texts": {"type": "array", "items": {"type": "string"}}, "normalize": {"type": "boolean", "default": true}}},
            "ImageRequest": {"type": "object", "required": ["images"], "additionalProperties": false, "properties": {
                "images": {"type": "array", "items": {"type": "string", "description": "base64 or data URL"}},
                "normalize": {"type": "boolean", "default": true}, "layer": {"type": "integer", "default": -1}}},
            "ClassifyRequest": {"type": "object", "required": ["images", "labels"], "additionalProperties": false, "properties": {
                "images": {"type": "array", "items": {"type": "string"}}, "labels": {"type": "array", "items": {"type": "string"}},
                "templates": {"type": "array", "items": {"type": "string", "description": "contains {}"}},
                "top_k": {"type": "integer", "default": 5}}},
            "ClassifyResponse": {"type": "object", "properties": {"model": {"type": "string"}, "results": {"type": "array", "items": {
                "type": "object", "properties": {"predictions": {"type": "array", "items": {"type": "object", "properties": {
                    "label": {"type": "string"}, "probability": {"type": "number"}}}}}}}}},
            "OpenAiEmbeddingsRequest": {"type": "object", "required": ["input"], "additionalProperties": false, "properties": {
                "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "model": {"type": "string"}, "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer"}, "user": {"type": "string"}}},
            "OpenAiEmbeddings": {"type": "object", "properties": {"object": {"type": "string"}, "model": {"type": "string"},
                "data": {"type": "array", "items": {"type": "object", "properties": {"object": {"type": "string"}, "index": {"type": "integer"},
                    "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}}}},
                "usage": {"type": "object"}}},
        }},
    });
    if auth {
        doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer"}});
        doc["security"] = json!([{"bearer": []}]);
    }
    doc
}
