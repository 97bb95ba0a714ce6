-- A user's provider identities become rows, one per linked object, so a provider added to the
-- registry needs no column of its own. `profile_links` keeps the per-user row: the change counters
-- and `updated_at`, the links version a change is recorded against.
--
-- `user_links_object_once` keeps the rule of migration 20261201000100 for every provider: an
-- object belongs to one user. `ordinal` keeps the order a member's ids were linked in (a user's
-- wallets are sent to in that order).
create table user_links (
    user_id   text not null references profile_links (user_id) on delete cascade,
    provider  text not null,
    object_id text not null,
    ordinal   int  not null check (ordinal >= 0),
    primary key (user_id, provider, ordinal),
    constraint user_links_object_once unique (provider, object_id)
);

insert into user_links (user_id, provider, object_id, ordinal)
select user_id, 'juspay_customer', juspay_customer_id, 0
  from profile_links where juspay_customer_id is not null
union all
select p.user_id, 'juspay_wallet', w.wallet_id, (w.n - 1)::int
  from profile_links p, unnest(p.juspay_wallet_ids) with ordinality as w(wallet_id, n)
union all
select user_id, 'razorpay_upi', razorpay_customer_reference, 0
  from profile_links where razorpay_customer_reference is not null;

drop trigger profile_link_wallets_sync on profile_links;
drop function profile_link_wallets_sync();
drop table profile_link_wallets;
-- Their unique indexes go with the columns.
alter table profile_links
    drop column juspay_customer_id,
    drop column juspay_wallet_ids,
    drop column razorpay_customer_reference;

-- Which providers exist is the registry's rule now; the gateway refuses a step row naming a
-- provider it has not registered when it reads it.
alter table change_steps drop constraint change_steps_target_check;

grant select, insert, update, delete on user_links to profile_gateway_app;
