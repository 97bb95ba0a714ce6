//! Outside sandbox mode the gateway refuses to serve as a role that the audit trail's protections
//! do not bind: a superuser, the owner of the audit tables, or a member of the owner's role
//! (either can disable the append-only triggers or re-hash a chain).

/// The group role the gateway's login role should be granted (migration 0002).
pub const APP_ROLE: &str = "profile_gateway_app";

/// Why the current role may not serve, or `None` when it may.
pub async fn privileged_role(conn: &mut sqlx::PgConnection) -> Result<Option<String>, sqlx::Error> {
    let r = sqlx::query!(
        r#"select current_user as "me!", r.rolsuper as "superuser!",
                  pg_get_userbyid(c.relowner) as owner,
                  coalesce(pg_has_role(current_user, c.relowner, 'MEMBER'), false) as "member!"
             from pg_roles r
             left join pg_class c on c.oid = to_regclass('public.audit_events')
            where r.rolname = current_user"#
    )
    .fetch_one(&mut *conn)
    .await?;
    let fix = format!(
        "connect as a login role granted {APP_ROLE} only (`create role gateway login in role {APP_ROLE}`; docs/auditing.md, \"Roles and grants\")"
    );
    let why = if r.superuser {
        Some(format!(
            "database.url connects as {}, a superuser, which the audit trail's protections do not bind: {fix}",
            r.me
        ))
    } else if r.owner.as_deref() == Some(r.me.as_str()) {
        Some(format!(
            "database.url connects as {}, the owner of the audit tables (the migrations' role), which may disable their protections: {fix}",
            r.me
        ))
    } else if r.member {
        Some(format!(
            "database.url connects as {}, a member of {}, the owner of the audit tables, which may disable their protections: {fix}",
            r.me,
            r.owner.unwrap_or_default()
        ))
    } else {
        None
    };
    Ok(why)
}

/// Refuses a privileged role now, or, when the database cannot be reached yet (the gateway still
/// starts and answers probes), as soon as it can: then the process exits.
pub async fn refuse_privileged(pool: &sqlx::PgPool) -> Result<(), String> {
    match check(pool).await {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(why),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the database role yet; will check once the database answers");
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    match check(&pool).await {
                        Ok(None) => return,
                        Ok(Some(why)) => {
                            tracing::error!("{why}");
                            eprintln!("error: {why}");
                            std::process::exit(1);
                        }
                        Err(_) => {}
                    }
                }
            });
            Ok(())
        }
    }
}

async fn check(pool: &sqlx::PgPool) -> Result<Option<String>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    privileged_role(&mut conn).await
}
