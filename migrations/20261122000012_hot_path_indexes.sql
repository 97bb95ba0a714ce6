-- The final-state write releases a change's idempotency key by change id; without this index the
-- planner may scan every remembered key once per finished change (seen in the benchmark: 200 ms
-- per batch after 20,000 changes).
create index idempotency_keys_by_change on idempotency_keys (change_id);
