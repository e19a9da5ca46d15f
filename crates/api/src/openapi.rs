//! The OpenAPI document. The routes' annotations say what is particular to
//! each operation; [`document`] adds what follows from the kind of
//! operation (the problem responses every layer in front of a handler can
//! give), so that the document describes every answer the server gives.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Palisade", description = "Security-first multi-tenant communications platform API."),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Sign-up, login and sessions of people"),
        (name = "me", description = "The calling principal"),
        (name = "api-keys", description = "API keys of the tenant"),
        (name = "users", description = "People of the tenant"),
        (name = "events", description = "The tenant's audit trail"),
        (name = "recordings", description = "Call recordings: metadata, audio with Range requests, deletion"),
        (name = "exports", description = "Data exports (GDPR): the tenant's or a person's data as an archive"),
        (name = "sip", description = "SIP credentials and registrations of an identity"),
        (name = "streams", description = "Tickets that open a WebSocket stream from a browser"),
        (name = "sysadmin", description = "Operator API: operator sessions, or the master key (break-glass)"),
    ),
    components(schemas(palisade_core::Problem, palisade_core::FieldError))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A person's access token (JWT) or an API key (`ak_…`)."))
                    .build(),
            ),
        );
        c.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        c.add_security_scheme(
            "master_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The sysadmin master key (`mk_…`): break-glass, or disabled."))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An operator's session (`op_…`) from `POST /sysadmin/v1/auth/login`."))
                    .build(),
            ),
        );
    }
}

/// A problem response of the document: status, component name, description.
const PROBLEMS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "`validation_failed`: the request is not valid (see `errors`); or `blocked`: a text field holds \
         more links or phone numbers than the content rules allow.",
    ),
    (
        401,
        "Unauthenticated",
        "`unauthenticated`: no valid credential for this route, whatever is wrong with it (the same \
         answer for unknown, expired, revoked, malformed or misplaced ones); on inbound callbacks \
         `invalid_signature`.",
    ),
    (402, "PaymentRequired", "`insufficient_credits`: the balance does not cover this (`cost` says what it would)."),
    (
        403,
        "Forbidden",
        "`forbidden`: the credential lacks a permission or breaks a rule of its tenant; or `blocked`: \
         the client address or credential is blocked (address lists, repeated violations).",
    ),
    (404, "NotFound", "`not_found`: no such resource, or one of another tenant (the same answer)."),
    (408, "RequestTimeout", "`request_timeout`: the request body did not arrive in time."),
    (409, "Conflict", "`conflict`: the resource's state forbids this now; or `idempotency_key_reused`."),
    (413, "PayloadTooLarge", "`payload_too_large`: the body is over the size limit (`limit_bytes`)."),
    (415, "UnsupportedMediaType", "`unsupported_media_type`: send the body as `application/json` (UTF-8)."),
    (
        416,
        "RangeNotSatisfiable",
        "`range_not_satisfiable`: the `Range` asked for is not within the file (`Content-Range: bytes */<size>`).",
    ),
    (423, "Locked", "`frozen`: the tenant, credential or identity is frozen (kill-switch)."),
    (426, "UpgradeRequired", "`upgrade_required`: a WebSocket endpoint asked without the WebSocket handshake."),
    (
        429,
        "TooManyRequests",
        "`rate_limited` (which limit in `limit`, when to retry in `retry_after` and `Retry-After`); on \
         sends and calls also `rate_per_second`, `country_not_allowed`, `monthly_budget` or \
         `concurrent_calls`.",
    ),
    (500, "InternalError", "`internal`: an unexpected error; it has been logged."),
    (503, "Unavailable", "`unavailable`: too much of this at once; retry shortly (`Retry-After`)."),
];

/// The document as served: `doc` (the annotated routes) with the problem
/// responses of every operation, as references to shared responses of
/// type `application/problem+json`, and the input limits that apply to
/// every request body.
pub fn document(doc: utoipa::openapi::OpenApi, max_text_chars: usize) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    let responses: Map<String, Value> = PROBLEMS
        .iter()
        .map(|(status, name, text)| {
            let mut r = json!({
                "description": text,
                "content": { palisade_core::error::PROBLEM_CONTENT_TYPE: {
                    "schema": { "$ref": "#/components/schemas/Problem" } } },
            });
            let header = match status {
                401 => Some(("WWW-Authenticate", "`Bearer`, when a credential was expected.")),
                429 | 503 => Some(("Retry-After", "Seconds to wait before retrying, when known.")),
                416 => Some(("Content-Range", "`bytes */<size>`: how long the file is.")),
                _ => None,
            };
            if let Some((name, description)) = header {
                r["headers"] = json!({ name: { "description": description, "schema": { "type": "string" } } });
            }
            ((*name).to_owned(), r)
        })
        .collect();
    doc["components"]["responses"] = Value::Object(responses);

    let mut bodies = BTreeSet::new();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for (_, op) in item.iter_mut() {
                add_problems(path, op);
                optional_body_is_absent(op);
                if let Some(r) =
                    op.pointer("/requestBody/content/application~1json/schema/$ref").and_then(Value::as_str)
                {
                    bodies.insert(r.to_owned());
                }
            }
        }
    }
    // Rules across members, which the derived schemas cannot state.
    exactly_one_of(&mut doc, "CreateKeyRequest", "role", "permissions");
    // Every string of a JSON body is held to the text limit (SPEC §6).
    let mut seen = BTreeSet::new();
    for r in bodies {
        limit_strings(&mut doc, &r, max_text_chars, &mut seen);
    }
    doc
}

/// The problem responses an operation can give because of what it is, on
/// top of those its annotation names; every problem response becomes a
/// reference to the shared one for its status.
fn add_problems(path: &str, op: &mut Value) {
    let schemes: BTreeSet<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|r| r.keys().cloned())
        .collect();
    let has_query = op["parameters"].as_array().into_iter().flatten().any(|p| p["in"] == "query");
    let body = op.get("requestBody").is_some();
    // The inbound callbacks read their body as bytes, for the signature.
    let raw_body = op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "inbound"));

    // Every request: the address pass (lists, blocks: 403; limits: 429)
    // and the unexpected.
    let mut statuses = BTreeSet::from([403, 429, 500]);
    if !schemes.is_empty() {
        statuses.insert(401);
    }
    if schemes.contains("bearer") {
        // The tenant, the key or the identity may be frozen.
        statuses.insert(423);
    }
    if path.contains('{') {
        statuses.insert(404);
    }
    if has_query {
        statuses.insert(400);
    }
    if body {
        statuses.extend([400, 413]);
        if !raw_body {
            statuses.insert(415);
        }
        if schemes.is_empty() {
            // A body read before any credential needs a read slot and
            // must arrive in time (see `crate::body`).
            statuses.extend([408, 503]);
        }
    }
    if op.pointer("/responses/101").is_some() {
        // A WebSocket endpoint: asked without the handshake.
        statuses.insert(426);
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { return };
    for (status, name, _) in PROBLEMS {
        let key = status.to_string();
        if statuses.contains(status) || responses.contains_key(&key) {
            responses.insert(key, json!({ "$ref": format!("#/components/responses/{name}") }));
        }
    }
}

/// Exactly one of two optional members of `schema` is given (not null).
fn exactly_one_of(doc: &mut Value, schema: &str, a: &str, b: &str) {
    let branch = |given: &str, other: &str| {
        json!({
            "required": [given],
            "properties": { given: { "not": { "type": "null" } }, other: { "type": "null" } },
        })
    };
    if let Some(s) = doc.pointer_mut(&format!("/components/schemas/{schema}")).and_then(Value::as_object_mut) {
        s.insert("oneOf".into(), json!([branch(a, b), branch(b, a)]));
    }
}

/// An optional body (`request_body = Option<T>`) may be left out; it is
/// not `null`, which the server refuses like any other non-object.
fn optional_body_is_absent(op: &mut Value) {
    let Some(schema) = op.pointer_mut("/requestBody/content/application~1json/schema") else { return };
    let Some(variants) = schema.get("oneOf").and_then(Value::as_array) else { return };
    if let [null, body] = variants.as_slice() {
        if null == &json!({ "type": "null" }) {
            *schema = body.clone();
        }
    }
}

/// Gives every string in the schema `reference` (and those it refers to)
/// that has no tighter bound the text limit as `maxLength`.
fn limit_strings(doc: &mut Value, reference: &str, max: usize, seen: &mut BTreeSet<String>) {
    if !seen.insert(reference.to_owned()) {
        return;
    }
    let Some(pointer) = reference.strip_prefix('#') else { return };
    let mut refs = Vec::new();
    if let Some(schema) = doc.pointer_mut(pointer) {
        limit_in(schema, max, &mut refs);
    }
    for r in refs {
        limit_strings(doc, &r, max, seen);
    }
}

fn limit_in(schema: &mut Value, max: usize, refs: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                refs.push(r.to_owned());
            }
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string && !map.contains_key("maxLength") && !map.contains_key("enum") {
                map.insert("maxLength".into(), max.into());
            }
            for (_, v) in map.iter_mut() {
                limit_in(v, max, refs);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| limit_in(v, max, refs)),
        _ => {}
    }
}

/// A list of strings of the given forms, or null (an optional field).
fn optional_list(items: utoipa::openapi::schema::ObjectBuilder) -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    ArrayBuilder::new().schema_type(SchemaType::from_iter([Type::Array, Type::Null])).items(items)
}

fn string() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String)
}

/// Origins as browsers send them in `Origin`: scheme, host, optional port
/// (see `api_keys::valid_origin`); at most 100.
pub fn origins() -> utoipa::openapi::schema::Array {
    optional_list(string().pattern(Some(r"^https?://[A-Za-z0-9.:\[\]-]+$"))).max_items(Some(100)).build()
}

/// Permission names, at least one.
pub fn permissions() -> utoipa::openapi::schema::Array {
    let names = palisade_core::PermissionSet::all().to_strings();
    optional_list(string().enum_values(Some(names))).min_items(Some(1)).build()
}

/// What an agent token may be given: a non-empty subset of its five
/// permissions.
pub fn agent_permissions() -> utoipa::openapi::schema::Array {
    let names = palisade_core::PermissionSet::agent().to_strings();
    optional_list(string().enum_values(Some(names))).min_items(Some(1)).build()
}

/// Webhook event types, or `*` for all of them.
fn event_types() -> utoipa::openapi::schema::ObjectBuilder {
    string().enum_values(Some(palisade_webhooks::events::EVENT_TYPES.iter().copied().chain(["*"])))
}

pub fn webhook_events() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::ArrayBuilder;
    ArrayBuilder::new().items(event_types()).min_items(Some(1)).build()
}

pub fn optional_webhook_events() -> utoipa::openapi::schema::Array {
    optional_list(event_types()).min_items(Some(1)).build()
}

/// `true`, or null (an optional flag that can only be set).
pub fn only_true() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
        .enum_values(Some([Value::Bool(true), Value::Null]))
        .build()
}
