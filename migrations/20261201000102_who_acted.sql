-- Who acted, completely: every change records its caller's name, how it authenticated (`token` or
-- `jwt:{issuer}`), the JWT subject, the end-user assertion's subject and jti when there was one,
-- and a gateway-made request id beside the caller-chosen x-request-id (which one caller could set
-- to look like another's). Link changes carry the same record in their audit event's values
-- (under "actor"), where the hash chain covers it, and so does an operator's retry of a change.
-- The auditor views show them.
alter table changes add column actor jsonb;

create or replace view audit_log as
select e.id                                     as event_id,
       e.occurred_at,
       e.user_id,
       e.seq                                    as user_event_seq,
       e.event_type,
       e.outcome,
       e.caller,
       e.caller_addr,
       e.request_id,
       e.trace_id,
       e.change_id,
       c.user_seq                               as change_seq,
       c.status                                 as change_status,
       c.created_at                             as change_created_at,
       c.finished_at                            as change_finished_at,
       e.step_no,
       coalesce(e.target, s.target)             as target,
       coalesce(e.upstream_ref, s.upstream_ref) as upstream_ref,
       e.fields,
       e.error_code,
       s.status                                 as step_status,
       s.attempts                               as step_attempts,
       s.error_retryable                        as step_error_retryable,
       s.upstream_status                        as step_upstream_status,
       s.upstream_code                          as step_upstream_code,
       s.error_message                          as step_error_message,
       e."values"                               as masked_values,
       e.hmac_key_id,
       e.prev_hash,
       e.hash,
       coalesce(e."values" -> 'actor' ->> 'auth', c.actor ->> 'auth')                 as auth_method,
       coalesce(e."values" -> 'actor' ->> 'subject', c.actor ->> 'subject')           as caller_subject,
       coalesce(e."values" -> 'actor' ->> 'assertion_subject', c.actor ->> 'assertion_subject')
                                                                                      as end_user_subject,
       coalesce(e."values" -> 'actor' ->> 'assertion_jti', c.actor ->> 'assertion_jti') as end_user_assertion_jti,
       coalesce(e."values" -> 'actor' ->> 'gateway_request_id', c.actor ->> 'gateway_request_id')
                                                                                      as gateway_request_id
  from audit_events e
  left join changes c on c.id = e.change_id
  left join change_steps s on s.change_id = e.change_id and s.step_no = e.step_no;
