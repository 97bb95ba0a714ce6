//! `profile_links`: who a user is at each provider.

use crate::audit::{self, AuditContext, AuditEvent};
use crate::domain::{ProfileLinks, UserId};
use serde_json::json;
use sqlx::PgPool;

pub async fn get(pool: &PgPool, user: &UserId) -> Result<Option<ProfileLinks>, sqlx::Error> {
    let row = sqlx::query!(
        "select juspay_customer_id, juspay_wallet_ids, razorpay_customer_reference
           from profile_links where user_id = $1",
        user.as_str()
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| ProfileLinks {
        juspay_customer_id: r.juspay_customer_id,
        juspay_wallet_ids: r.juspay_wallet_ids,
        razorpay_customer_reference: r.razorpay_customer_reference,
    }))
}

/// Replaces a user's links and records the change (old and new ids; ids are not PII) in one
/// transaction. Returns whether the user was new.
pub async fn put(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
    ctx: &AuditContext,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let old = sqlx::query!(
        "select juspay_customer_id, juspay_wallet_ids, razorpay_customer_reference
           from profile_links where user_id = $1 for update",
        user.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query!(
        "insert into profile_links (user_id, juspay_customer_id, juspay_wallet_ids, razorpay_customer_reference)
         values ($1, $2, $3, $4)
         on conflict (user_id) do update
            set juspay_customer_id = excluded.juspay_customer_id,
                juspay_wallet_ids = excluded.juspay_wallet_ids,
                razorpay_customer_reference = excluded.razorpay_customer_reference,
                updated_at = now()",
        user.as_str(),
        links.juspay_customer_id,
        &links.juspay_wallet_ids,
        links.razorpay_customer_reference,
    )
    .execute(&mut *tx)
    .await?;
    let created = old.is_none();
    let old_json = old.map(|o| {
        json!({
            "juspay_customer_id": o.juspay_customer_id,
            "juspay_wallet_ids": o.juspay_wallet_ids,
            "razorpay_customer_reference": o.razorpay_customer_reference,
        })
    });
    let mut event = AuditEvent::new(ctx, user.as_str(), "links_updated", "applied");
    event.fields = vec![
        "juspay_customer_id".into(),
        "juspay_wallet_ids".into(),
        "razorpay_customer_reference".into(),
    ];
    event.values = json!({"old": old_json, "new": links});
    audit::insert(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(created)
}
