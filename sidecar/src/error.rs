//! Everything a request can fail with, and the HTTP status and body each maps to.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Validation messages per request field; `subset` errors nest one level deeper,
/// as Electric reports them (`{"subset":{"limit":["…"]}}`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, FieldError>);

/// The messages of one field, or of the sub-fields of a nested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// Messages about the field itself.
    Messages(Vec<String>),
    /// Messages per sub-field (only `subset` uses this).
    Nested(BTreeMap<String, Vec<String>>),
}

impl FieldErrors {
    /// Errors about a single field.
    pub fn one(field: &str, message: impl Into<String>) -> FieldErrors {
        let mut e = FieldErrors::default();
        e.add(field, message);
        e
    }

    /// Adds a message about `field`.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        match self.0.entry(field.to_string()).or_insert_with(|| FieldError::Messages(Vec::new())) {
            FieldError::Messages(m) => m.push(message.into()),
            FieldError::Nested(n) => n.entry(String::new()).or_default().push(message.into()),
        }
    }

    /// Adds a message about `field.sub` (e.g. `subset.limit`).
    pub fn add_nested(&mut self, field: &str, sub: &str, message: impl Into<String>) {
        let entry = self.0.entry(field.to_string()).or_insert_with(|| FieldError::Nested(BTreeMap::new()));
        if let FieldError::Messages(m) = entry {
            // A field never gets both forms; keep the plain messages under an empty key.
            let plain = std::mem::take(m);
            let mut n = BTreeMap::new();
            if !plain.is_empty() {
                n.insert(String::new(), plain);
            }
            *entry = FieldError::Nested(n);
        }
        if let FieldError::Nested(n) = entry {
            n.entry(sub.to_string()).or_default().push(message.into());
        }
    }

    /// Moves every error of `other` into `self`.
    pub fn merge(&mut self, other: FieldErrors) {
        for (field, e) in other.0 {
            match e {
                FieldError::Messages(ms) => ms.into_iter().for_each(|m| self.add(&field, m)),
                FieldError::Nested(n) => {
                    for (sub, ms) in n {
                        ms.into_iter().for_each(|m| self.add_nested(&field, &sub, m))
                    }
                }
            }
        }
    }

    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `field` has an error.
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The `errors` object of a 400 body.
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (field, e) in &self.0 {
            let v = match e {
                FieldError::Messages(m) => json!(m),
                FieldError::Nested(n) => json!(n),
            };
            out.insert(field.clone(), v);
        }
        Value::Object(out)
    }
}

/// A request that cannot be answered with a shape; each variant is one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `{"message":"Invalid request","errors":{…}}`.
    #[error("invalid request: {}", .0.to_json())]
    Invalid(FieldErrors),
    /// 400: the shape's WHERE clause failed on the data; the reason is the message.
    #[error("shape failed: {0}")]
    ShapeFailed(String),
    /// 400 with a body of its own (malformed POST bodies, as Electric words them).
    #[error("bad request body: {0}")]
    BadBody(Value),
    /// 401: the configured secret was not given.
    #[error("invalid API secret")]
    Unauthorized,
    /// 403: the database refused access to the table.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 for a table that does not exist.
    #[error("unknown table: {0}")]
    UnknownTable(String),
    /// 404 for a shape handle that does not exist (DELETE).
    #[error("no existing shape found")]
    NoSuchShape,
    /// 404 for an unknown route.
    #[error("not found")]
    NotFound,
    /// 405 for a method the route does not serve.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// 409: the client's handle is no longer the shape's; it must start again.
    #[error("must refetch (current handle {handle:?})")]
    MustRefetch {
        /// The handle now serving the definition, if known.
        handle: Option<String>,
    },
    /// 413: the request body is larger than allowed.
    #[error("request body too large")]
    BodyTooLarge,
    /// 503 with `retry-after`: the database or the shape is not available yet.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is missing.
        message: String,
        /// Seconds the client should wait.
        retry_after: u32,
    },
    /// 500: a bug in the sidecar (a caught panic); never caused by input alone.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A single-field 400.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(FieldErrors::one(field, message))
    }

    /// A 503 asking the client to come back in five seconds.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::Unavailable { message: message.into(), retry_after: 5 }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Invalid(_) | ApiError::ShapeFailed(_) | ApiError::BadBody(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::UnknownTable(_) | ApiError::NoSuchShape | ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::MustRefetch { .. } => 409,
            ApiError::BodyTooLarge => 413,
            ApiError::Unavailable { .. } => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The JSON body (the 409 body is a fixed array and the 404 route body is text,
    /// see `respond::error_reply`).
    pub fn body(&self) -> Value {
        match self {
            ApiError::Invalid(e) => json!({"message": "Invalid request", "errors": e.to_json()}),
            ApiError::ShapeFailed(reason) => json!({"message": reason, "errors": {"where": [reason]}}),
            ApiError::BadBody(v) => v.clone(),
            ApiError::Unauthorized => json!({"message": "Unauthorized - Invalid API secret"}),
            ApiError::Forbidden(m) => json!({"message": m}),
            ApiError::UnknownTable(m) => json!({"message": m, "errors": {"table": [m]}}),
            ApiError::NoSuchShape => json!({"message": "No existing shape found"}),
            ApiError::NotFound => json!({"message": "Not found"}),
            ApiError::MethodNotAllowed(_) => json!({"message": "Method not allowed"}),
            ApiError::MustRefetch { .. } => json!([{"headers": {"control": "must-refetch"}}]),
            ApiError::BodyTooLarge => json!({"error": "Request body too large"}),
            ApiError::Unavailable { message, .. } => json!({"message": message}),
            ApiError::Internal(_) => json!({"message": "Internal server error"}),
        }
    }
}

impl From<FieldErrors> for ApiError {
    fn from(e: FieldErrors) -> Self {
        ApiError::Invalid(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_render_as_electric_lists_and_nest_subset_errors() {
        let mut e = FieldErrors::default();
        e.add("offset", "has invalid format");
        e.add_nested("subset", "limit", "must be greater than 0");
        e.add_nested("subset", "order_by", "order_by is required when limit or offset is present");
        assert_eq!(
            ApiError::Invalid(e).body(),
            json!({"message": "Invalid request", "errors": {
                "offset": ["has invalid format"],
                "subset": {"limit": ["must be greater than 0"],
                           "order_by": ["order_by is required when limit or offset is present"]}}})
        );
    }

    #[test]
    fn unknown_table_names_the_table_field() {
        let e = ApiError::UnknownTable("relation \"nope\" does not exist".into());
        assert_eq!(e.status(), 404);
        assert_eq!(e.body()["errors"]["table"][0], "relation \"nope\" does not exist");
    }
}
