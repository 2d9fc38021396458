//! The model's sqlx impls against real databases, through the `Any` driver
//! the store uses: SQLite always, PostgreSQL when
//! `SHELLWEGO_TEST_DATABASE_URL` names a server (as for the server's tests).

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use super::*;

async fn pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    // One connection: the temporary table lives in it.
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

async fn round_trip(url: &str) {
    let pool = pool(url).await;
    sqlx::query("CREATE TEMPORARY TABLE model_t (n BIGINT NOT NULL, status TEXT NOT NULL, strategy TEXT NOT NULL, app_id TEXT NOT NULL, node_id TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    let app: AppId = "app_0123456789abcdefghij".parse().unwrap();
    let node: NodeId = "node_8s2d9k1m3x".parse().unwrap();
    for (n, (status, strategy, node)) in [
        (AppStatus::Running, Strategy::BlueGreen, Some(node.clone())),
        (AppStatus::Pending, Strategy::Rolling, None),
    ]
    .into_iter()
    .enumerate()
    {
        sqlx::query("INSERT INTO model_t (n, status, strategy, app_id, node_id) VALUES ($1, $2, $3, $4, $5)")
            .bind(n as i64)
            .bind(status)
            .bind(strategy)
            .bind(&app)
            .bind(node)
            .execute(&pool)
            .await
            .unwrap();
    }
    // Stored as the plain names.
    let rows = sqlx::query("SELECT status, strategy, app_id, node_id FROM model_t ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    let text: Vec<(String, String, String, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get(0).unwrap(),
                r.try_get(1).unwrap(),
                r.try_get(2).unwrap(),
                r.try_get(3).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        text,
        [
            (
                "running".to_string(),
                "blue-green".to_string(),
                app.to_string(),
                Some(node.to_string())
            ),
            (
                "pending".to_string(),
                "rolling".to_string(),
                app.to_string(),
                None
            ),
        ]
    );
    // Read back typed, by name and by position.
    let r = &rows[0];
    assert_eq!(
        r.try_get::<AppStatus, _>("status").unwrap(),
        AppStatus::Running
    );
    assert_eq!(
        r.try_get::<Strategy, _>("strategy").unwrap(),
        Strategy::BlueGreen
    );
    assert_eq!(r.try_get::<AppId, _>("app_id").unwrap(), app);
    assert_eq!(
        r.try_get::<Option<NodeId>, _>("node_id").unwrap(),
        Some(node.clone())
    );
    assert_eq!(rows[1].try_get::<Option<NodeId>, _>(3).unwrap(), None);
    let typed: Vec<(AppStatus, Strategy, AppId, Option<NodeId>)> =
        sqlx::query_as("SELECT status, strategy, app_id, node_id FROM model_t ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        typed[1],
        (AppStatus::Pending, Strategy::Rolling, app.clone(), None)
    );
    // A value in a WHERE clause.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM model_t WHERE status = $1")
        .bind(AppStatus::Pending)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A word or id the model does not know is an error when read, not a default.
    sqlx::query("UPDATE model_t SET status = 'sleeping', app_id = 'node_x' WHERE n = 1")
        .execute(&pool)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT status, app_id FROM model_t WHERE n = 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    let e = rows[0].try_get::<AppStatus, _>("status").unwrap_err();
    assert!(e.to_string().contains("sleeping"), "{e}");
    let e = rows[0].try_get::<AppId, _>("app_id").unwrap_err();
    assert!(e.to_string().contains("app id"), "{e}");
    pool.close().await;
}

#[tokio::test]
async fn enums_and_ids_are_text_in_sqlite() {
    round_trip("sqlite::memory:").await;
}

#[tokio::test]
async fn enums_and_ids_are_text_in_postgres() {
    let Ok(url) = std::env::var("SHELLWEGO_TEST_DATABASE_URL") else {
        eprintln!("SHELLWEGO_TEST_DATABASE_URL is not set: PostgreSQL not tested");
        return;
    };
    round_trip(&url).await;
}
