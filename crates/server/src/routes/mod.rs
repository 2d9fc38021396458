//! Handlers, one module per resource, named `<resource>_<verb>`.

pub mod agent;
pub mod apps;
pub mod auth;
pub mod deployments;
pub mod domains;
pub mod events;
pub mod exec_ws;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod orgs;
pub mod secrets;
pub mod tokens;
pub mod user;
pub mod webhooks;

use crate::model::PageInfo;
use shellwego_api::Pagination;

pub(crate) fn pagination(p: PageInfo) -> Pagination {
    Pagination {
        total: p.total,
        limit: p.limit,
        has_more: p.has_more,
        next_cursor: p.next_cursor,
        prev_cursor: p.prev_cursor,
        first_cursor: p.first_cursor,
        last_cursor: p.last_cursor,
    }
}

/// Query parameters shared by every list endpoint, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ListQueryDoc {
    /// Items per page, 1–100 (default 20).
    limit: Option<u32>,
    /// Opaque cursor from a previous response's `pagination`.
    cursor: Option<String>,
    /// `field:asc|desc[,field:dir…]`; default `created_at:desc`.
    sort: Option<String>,
    /// `filter[field]=a,b`, `filter[field][gte|gt|lte|lt]=v`, `filter[label][key]=v`, `filter[q]=text`.
    #[param(style = DeepObject, explode, value_type = Option<Object>)]
    filter: Option<String>,
}
