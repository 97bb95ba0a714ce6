//! A status the gateway does not know, found in a row, fails the read where it is read: it is
//! never shown as some other status.

use crate::helpers::*;
use profile_gateway::domain::{ChangeStatus, StepStatus};
use serde_json::{Value, json};
use sqlx::PgPool;

#[tokio::test]
async fn a_step_row_with_an_unknown_status_is_an_error_not_pending() {
    let app = spawn_app().await;
    let resp = app.patch("alice", &json!({ "first_name": "Alice" })).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let id: uuid::Uuid = serde_json::from_value(body["change_id"].clone()).unwrap();
    // A step written by hand, or by a newer gateway with a status this one lacks, is what the
    // read must not misreport.
    sqlx::query(
        r#"update changes set steps = (select jsonb_object_agg(k, v || '{"status": "paused"}')
                                         from jsonb_each(steps) s(k, v))
            where id = $1"#,
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, problem) = problem(app.get(&format!("/changes/{id}")).await).await;
    assert_eq!(status, 500);
    assert_eq!(problem["code"], "internal_error");
}

#[tokio::test]
async fn statuses_are_text_in_the_database_and_unknown_text_does_not_decode() {
    let pool = PgPool::connect(&admin_url()).await.unwrap();
    for s in ChangeStatus::ALL {
        let read: ChangeStatus = sqlx::query_scalar("select $1::text")
            .bind(s.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(read, s);
        let written: String = sqlx::query_scalar("select $1::text")
            .bind(s)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(written, s.as_str());
    }
    for s in StepStatus::ALL {
        let read: StepStatus = sqlx::query_scalar("select $1::text")
            .bind(s.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(read, s);
    }
    let bogus = sqlx::query_scalar::<_, ChangeStatus>("select 'bogus'::text")
        .fetch_one(&pool)
        .await;
    assert!(
        matches!(bogus, Err(sqlx::Error::ColumnDecode { .. })),
        "{bogus:?}"
    );
    let bogus = sqlx::query_scalar::<_, StepStatus>("select 'Pending'::text")
        .fetch_one(&pool)
        .await;
    assert!(
        matches!(bogus, Err(sqlx::Error::ColumnDecode { .. })),
        "{bogus:?}"
    );
    pool.close().await;
}
