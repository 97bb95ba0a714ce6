-- Which kind of gateway uses this database. A production gateway records `production` at start;
-- `serve --sandbox` (demo token, demo links, simulated upstreams) refuses such a database, so a
-- mistyped database.url cannot serve real data to the published demo token or seed demo links in.
create table gateway_metadata (
    key        text primary key,
    value      text not null,
    updated_at timestamptz not null default now()
);

grant select, insert, update on gateway_metadata to profile_gateway_app;
