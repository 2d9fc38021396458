//! The app controller: a loop that reconciles apps whose instances need
//! attention (unplaced, on a node that is no longer ready, replacements in
//! flight) whenever something changes, every two seconds regardless (so
//! several control planes on one database converge), and every app now
//! and then.

use std::time::Duration;

use crate::state::AppState;

const PASS_EVERY: Duration = Duration::from_secs(2);
const FULL_PASS_EVERY: u32 = 15;

pub async fn run(st: AppState) {
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = st.kick.notified() => {}
            _ = tokio::time::sleep(PASS_EVERY) => {}
        }
        n = n.wrapping_add(1);
        let ids = if n.is_multiple_of(FULL_PASS_EVERY) {
            st.store.app_ids().await
        } else {
            st.store.apps_needing_reconcile().await
        };
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "controller: cannot list apps");
                continue;
            }
        };
        let mut any = false;
        for id in ids {
            match super::apps::reconcile(&st.store, &id).await {
                Ok(()) => any = true,
                Err(e) => tracing::warn!(app_id = %id, error = %e, "controller: reconcile failed"),
            }
        }
        match super::node_agents::delete_drained_nodes(&st.store).await {
            Ok(0) => {}
            Ok(_) => any = true,
            Err(e) => tracing::warn!(error = %e, "controller: cannot delete drained nodes"),
        }
        if any {
            // Wake syncs and the router (not the controller itself).
            st.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}
