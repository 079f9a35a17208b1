//! Subset snapshots (`subset__*` query parameters or `POST /v1/shape`): the
//! extension runs the query under one snapshot and returns Electric's
//! `{"metadata":…,"data":[…]}` object, which is sent as is.

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use crate::app::{catalog_error, App};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::params::ShapeRequest;
use crate::respond::{self, cache, Reply};
use crate::serve::{self, ReadError};

/// Answers a subset request.
pub async fn respond<C: Catalog>(app: &App<C>, req: &ShapeRequest) -> Result<Reply, ApiError> {
    let Some(subset) = &req.subset else {
        return Err(ApiError::Internal("subset::respond without a subset".into()));
    };
    app.ensure_storage_dir().await?;
    let deadline = app.deadline();
    let (info, shape) = app.resolve(&req.definition, req.handle.as_deref(), deadline).await?;
    // The position must be read before the query's snapshot is taken: every change
    // the snapshot does not see then lies after it, and the client filters the rest.
    let offset = match serve::position_before_subset(app, &shape, deadline).await {
        Ok(o) => o,
        Err(ReadError::Gone) => return Err(app.gone_error(&req.definition, &shape).await),
        Err(ReadError::Api(e)) => return Err(e),
    };
    let body = app.catalog.subset(&info.handle, subset).await.map_err(catalog_error)?;
    let mut reply = respond::raw_json(StatusCode::OK, Bytes::from(body));
    let h = reply.headers_mut();
    respond::set(h, respond::HANDLE, &info.handle);
    respond::set(h, respond::OFFSET, &offset.to_string());
    respond::set(h, respond::SCHEMA, &info.electric_schema);
    h.insert(respond::SNAPSHOT, HeaderValue::from_static("true"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache::NO_CACHE));
    Ok(reply)
}
