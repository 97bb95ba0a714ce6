//! `user_links`: who a user is at each provider, one row per linked object; `profile_links` holds
//! the user's row (and `updated_at`, the links version changes are recorded against).

use crate::audit::{self, AuditEvent};
use crate::domain::{FieldError, LinkMember, Origin, ProfileLinks, UserId};
use serde_json::json;
use sqlx::PgPool;

/// The user's links at `members`, or `None` for a user the gateway does not know.
pub async fn get(
    pool: &PgPool,
    user: &UserId,
    members: &[LinkMember],
) -> Result<Option<ProfileLinks>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select coalesce(array_agg(l.provider order by l.provider, l.ordinal)
                             filter (where l.provider is not null), '{}') as "providers!",
                  coalesce(array_agg(l.object_id order by l.provider, l.ordinal)
                             filter (where l.provider is not null), '{}') as "objects!"
             from profile_links p left join user_links l on l.user_id = p.user_id
            where p.user_id = $1
            group by p.user_id"#,
        user.as_str()
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| links_of(members, &r.providers, r.objects))
        .transpose()
}

/// Links from the parallel arrays of one user's rows.
pub(crate) fn links_of(
    members: &[LinkMember],
    providers: &[String],
    objects: Vec<String>,
) -> Result<ProfileLinks, sqlx::Error> {
    let rows = providers.iter().map(String::as_str).zip(objects);
    ProfileLinks::from_rows(members, rows).map_err(|e| sqlx::Error::Decode(e.into()))
}

/// The `(provider, object id, ordinal)` rows of `links`.
fn rows(links: &ProfileLinks) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (member, ids) in links.entries() {
        for (i, id) in ids.iter().enumerate() {
            out.0.push(member.provider.as_str().to_string());
            out.1.push(id.clone());
            out.2.push(i as i32);
        }
    }
    out
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
/// transaction. An object another user holds is refused: the unique constraint of migration
/// 20261202000100 is the rule, the query before the write only finds which members broke it.
pub async fn put(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
    origin: &Origin,
) -> Result<PutOutcome, sqlx::Error> {
    // A concurrent request may take an object between the check and the write: the constraint
    // refuses it then, and the check, run again, names the member.
    for _ in 0..2 {
        let conflicts = conflicts(pool, user, links).await?;
        if !conflicts.is_empty() {
            refused(pool, user, &conflicts, origin).await?;
            return Ok(PutOutcome::Conflict(conflicts));
        }
        match write(pool, user, links, origin).await {
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
    let (providers, objects, _) = rows(links);
    let held = sqlx::query_scalar!(
        r#"select l.provider || ' ' || l.object_id as "held!"
             from user_links l
             join unnest($2::text[], $3::text[]) as x(provider, object_id)
               on x.provider = l.provider and x.object_id = l.object_id
            where l.user_id <> $1"#,
        user.as_str(),
        &providers,
        &objects,
    )
    .fetch_all(pool)
    .await?;
    let refused = |pointer: String| {
        FieldError::new(
            pointer,
            "linked_to_another_user",
            "this provider object is linked to another user; an object belongs to one user",
        )
    };
    let mut out = Vec::new();
    for (member, ids) in links.entries() {
        for (i, id) in ids.iter().enumerate() {
            if held.contains(&format!("{} {id}", member.provider)) {
                out.push(refused(if member.many {
                    format!("/{}/{i}", member.name)
                } else {
                    format!("/{}", member.name)
                }));
            }
        }
    }
    Ok(out)
}

/// A refused attempt is evidence (someone tried to reach another user's objects): it is an audit
/// event of the user it targeted, naming the members, never the holder.
async fn refused(
    pool: &PgPool,
    user: &UserId,
    conflicts: &[FieldError],
    origin: &Origin,
) -> Result<(), sqlx::Error> {
    let mut event = AuditEvent::new(origin, user, "links_refused", "link_conflict");
    event.fields = conflicts.iter().map(|c| c.pointer.clone()).collect();
    event.error_code = Some("link_conflict");
    audit::insert(pool, &event).await
}

async fn write(
    pool: &PgPool,
    user: &UserId,
    links: &ProfileLinks,
    origin: &Origin,
) -> Result<PutOutcome, sqlx::Error> {
    let members: Vec<LinkMember> = links.entries().map(|(m, _)| *m).collect();
    let mut tx = pool.begin().await?;
    // Taking the user's row first orders concurrent puts of one user; `updated_at` is the version
    // a change planned against the old links is refused by.
    let created = sqlx::query_scalar!(
        r#"insert into profile_links (user_id) values ($1)
           on conflict (user_id) do update set updated_at = now()
           returning (xmax = 0) as "created!""#,
        user.as_str(),
    )
    .fetch_one(&mut *tx)
    .await?;
    let old = sqlx::query!(
        r#"select coalesce(array_agg(provider order by provider, ordinal), '{}') as "providers!",
                  coalesce(array_agg(object_id order by provider, ordinal), '{}') as "objects!"
             from user_links where user_id = $1"#,
        user.as_str()
    )
    .fetch_one(&mut *tx)
    .await?;
    let old = (!created)
        .then(|| links_of(&members, &old.providers, old.objects))
        .transpose()?;
    let (providers, objects, ordinals) = rows(links);
    sqlx::query!("delete from user_links where user_id = $1", user.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "insert into user_links (user_id, provider, object_id, ordinal)
         select $1, * from unnest($2::text[], $3::text[], $4::int[])",
        user.as_str(),
        &providers,
        &objects,
        &ordinals,
    )
    .execute(&mut *tx)
    .await?;
    let mut event = AuditEvent::new(origin, user, "links_updated", "applied");
    event.fields = members.iter().map(|m| m.name.to_string()).collect();
    // Who acted is the event's actor (audit::insert), no longer inside `values`.
    event.values = json!({"old": old, "new": links});
    audit::insert(&mut *tx, &event).await?;
    tx.commit().await?;
    Ok(if created {
        PutOutcome::Created
    } else {
        PutOutcome::Replaced
    })
}
