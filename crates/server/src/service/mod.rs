//! Domain operations behind the handlers. Each one scopes what it reads to
//! what the caller may see, so no handler can forget to.

pub mod agent_channel;
pub mod apps;
pub mod deployments;
pub mod domains;
pub mod events;
pub mod exec;
pub mod exec_session;
pub mod health;
pub mod identity;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod orgs;
pub mod secrets;
pub mod tokens;
pub mod webhooks;

use shellwego_core::list::ListParams;
use shellwego_core::Error;
use shellwego_store::list::{Page, Resource, Scope};
use shellwego_store::{AnyRow, Store};

/// One page of `res` as `scope` sees it: `params` checked against the
/// resource's schema (a 400 naming the parameter that does not fit), then
/// run on a connection from the pool.
pub(crate) async fn list_page<T>(
    store: &Store,
    res: &Resource,
    scope: &Scope,
    params: &ListParams,
    map: impl Fn(&AnyRow) -> Result<T, Error>,
) -> Result<Page<T>, Error> {
    let cursor_key = store.cursor_key()?;
    let q = params.resolve(res.schema, cursor_key)?;
    let mut conn = store.conn().await?;
    shellwego_store::list::list(&mut conn, res, scope, &q, cursor_key, map).await
}
