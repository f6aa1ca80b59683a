-- A database's content signature, to compare a restored database with the source: one line
-- per table (name, row count, the sum of a 64-bit hash of every row: independent of row
-- order), then the number of indexes. psql -X -A -t -q -F ' ' -f scripts/bench/signature.sql
select format('select %L, count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0) from %s x',
              c.oid::regclass::text, c.oid::regclass)
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
 where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
 order by c.oid::regclass::text
\gexec
select 'indexes', count(*), 0 from pg_indexes where schemaname not in ('pg_catalog', 'information_schema');
