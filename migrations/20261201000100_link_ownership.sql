-- A provider object belongs to one gateway user: the same Juspay customer, Juspay wallet or Razorpay
-- customer reference linked to two users would let one user's changes land on the other's objects.
--
-- Existing duplicates are not resolved here (which user really owns an object is an operator's
-- call): the migration stops, listing each duplicated object by provider and the user ids holding
-- it (object ids are not printed), and nothing is changed until they are fixed and it is re-run.
do $$
declare
    report text;
begin
    select string_agg(format('%s held by users %s', provider, users), '; ' order by provider, users)
      into report
      from (
        select 'juspay_customer_id' as provider,
               string_agg(quote_literal(user_id), ', ' order by user_id) as users
          from profile_links where juspay_customer_id is not null
         group by juspay_customer_id having count(*) > 1
        union all
        select 'razorpay_customer_reference',
               string_agg(quote_literal(user_id), ', ' order by user_id)
          from profile_links where razorpay_customer_reference is not null
         group by razorpay_customer_reference having count(*) > 1
        union all
        select 'juspay_wallet_ids',
               string_agg(distinct quote_literal(user_id), ', ')
          from profile_links, unnest(juspay_wallet_ids) as w(wallet_id)
         group by wallet_id having count(*) > 1
      ) d;
    if report is not null then
        raise exception 'profile_links: provider objects linked to more than one user: %', report
            using hint = 'Decide which user owns each object, fix the others with PUT /profile/{user}/links '
                         '(or UPDATE profile_links), then run the migrations again.';
    end if;
end
$$;

create unique index profile_links_juspay_customer_once
    on profile_links (juspay_customer_id) where juspay_customer_id is not null;
create unique index profile_links_razorpay_reference_once
    on profile_links (razorpay_customer_reference) where razorpay_customer_reference is not null;

-- An array column cannot carry a unique constraint per member, so each wallet also has a row here,
-- kept by the trigger below in the same statement as the links; its primary key is the constraint.
create table profile_link_wallets (
    wallet_id text primary key,
    user_id   text not null references profile_links (user_id) on delete cascade
);
create index profile_link_wallets_by_user on profile_link_wallets (user_id);

insert into profile_link_wallets (wallet_id, user_id)
select w.wallet_id, p.user_id from profile_links p, unnest(p.juspay_wallet_ids) as w(wallet_id);

create function profile_link_wallets_sync() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'UPDATE' and new.juspay_wallet_ids is not distinct from old.juspay_wallet_ids then
        return null;
    end if;
    delete from profile_link_wallets w
     where w.user_id = new.user_id and not (w.wallet_id = any (new.juspay_wallet_ids));
    insert into profile_link_wallets (wallet_id, user_id)
    select x.wallet_id, new.user_id from unnest(new.juspay_wallet_ids) as x(wallet_id)
    on conflict (wallet_id) do nothing;
    -- A wallet that another user holds was skipped above; refuse the row instead.
    if exists (select 1 from unnest(new.juspay_wallet_ids) as x(wallet_id)
                 join profile_link_wallets w using (wallet_id)
                where w.user_id <> new.user_id) then
        raise exception 'a juspay wallet is linked to another user'
            using errcode = 'unique_violation', constraint = 'profile_link_wallets_pkey';
    end if;
    return null;
end
$$;

-- Only when the wallets change: the hot path's updates of last_change_seq do not fire it.
create trigger profile_link_wallets_sync
    after insert or update of juspay_wallet_ids on profile_links
    for each row execute function profile_link_wallets_sync();

grant select, insert, update, delete on profile_link_wallets to profile_gateway_app;
