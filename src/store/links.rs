//! `profile_links`: who a user is at each provider.

use crate::audit::{self, AuditContext, AuditEvent};
use crate::domain::{FieldError, ProfileLinks, UserId};
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

/// What `put` did.
#[derive(Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
    /// Some of the objects are linked to another user (pointers into the request body); nothing
    /// was changed.
    Conflict(Vec<FieldError>),
}

/// Replaces a user's links and records the change (old and new ids; ids are not PII) in one
/// transaction. An object another user holds is refused: the unique indexes of migration
/// 20261201000100 are the rule, the query before the write only finds which members broke it.
pub async fn put(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
    ctx: &AuditContext,
) -> Result<PutOutcome, sqlx::Error> {
    // A concurrent request may take an object between the check and the write: the constraint
    // refuses it then, and the check, run again, names the member.
    for _ in 0..2 {
        let conflicts = conflicts(pool, user, links).await?;
        if !conflicts.is_empty() {
            refused(pool, user, &conflicts, ctx).await?;
            return Ok(PutOutcome::Conflict(conflicts));
        }
        match write(pool, user, links, ctx).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
            other => return other,
        }
    }
    Err(sqlx::Error::Protocol(
        "the links kept conflicting with concurrent changes".into(),
    ))
}

/// The members of `links` that another user holds, as JSON pointers into the request body.
async fn conflicts(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
) -> Result<Vec<FieldError>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select exists (select 1 from profile_links
                           where juspay_customer_id = $2 and user_id <> $1) as "customer!",
                  exists (select 1 from profile_links
                           where razorpay_customer_reference = $3 and user_id <> $1) as "reference!",
                  array(select wallet_id from profile_link_wallets
                         where wallet_id = any($4) and user_id <> $1) as "wallets!""#,
        user.as_str(),
        links.juspay_customer_id,
        links.razorpay_customer_reference,
        &links.juspay_wallet_ids,
    )
    .fetch_one(pool)
    .await?;
    let held = |pointer: String| {
        FieldError::new(
            pointer,
            "linked_to_another_user",
            "this provider object is linked to another user; an object belongs to one user",
        )
    };
    let mut out = Vec::new();
    if row.customer {
        out.push(held("/juspay_customer_id".into()));
    }
    for (i, w) in links.juspay_wallet_ids.iter().enumerate() {
        if row.wallets.contains(w) {
            out.push(held(format!("/juspay_wallet_ids/{i}")));
        }
    }
    if row.reference {
        out.push(held("/razorpay_customer_reference".into()));
    }
    Ok(out)
}

/// A refused attempt is evidence (someone tried to reach another user's objects): it is an audit
/// event of the user it targeted, naming the members, never the holder.
async fn refused(
    pool: &PgPool,
    user: &UserId,
    conflicts: &[FieldError],
    ctx: &AuditContext,
) -> Result<(), sqlx::Error> {
    let mut event = AuditEvent::new(ctx, user.as_str(), "links_refused", "link_conflict");
    event.fields = conflicts.iter().map(|c| c.pointer.clone()).collect();
    event.error_code = Some("link_conflict");
    audit::insert(pool, &event).await
}

async fn write(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
    ctx: &AuditContext,
) -> Result<PutOutcome, sqlx::Error> {
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
    // Who acted is the event's actor (audit::insert), no longer inside `values`.
    event.values = json!({"old": old_json, "new": links});
    audit::insert(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(if created {
        PutOutcome::Created
    } else {
        PutOutcome::Replaced
    })
}
