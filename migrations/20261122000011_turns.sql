-- A user's changes run one at a time in sequence order. `finished_seq` is the highest sequence
-- number up to which all of the user's changes are final, so "is it this change's turn?" is one
-- read of the row the change already locks (seq = finished_seq + 1) instead of a scan of changes.
alter table profile_links add column finished_seq bigint not null default 0;

update profile_links p
   set finished_seq = coalesce(
       (select min(c.user_seq) - 1 from changes c where c.user_id = p.user_id and c.status = 'pending'),
       p.last_change_seq);
