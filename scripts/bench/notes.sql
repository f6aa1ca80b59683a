-- The benchmark's wide rows: :rows notes of 2 to 3 KB of text each (2.7 KB on average in the dump),
-- built from 1024 phrases of made-up words plus a short unique hex tag per sentence, so the
-- text repeats the way prose and logs do without being one string over and over: gzip -6
-- compresses it about 3x (the pgbench tables beside it compress about 30x).
-- psql -v rows=N -f scripts/bench/notes.sql; about 1.5 s per 10,000 rows on one core.
create temp table vocab as
    select i as id, translate(substr(md5(i::text), 1, 3 + i % 8), '0123456789', 'ghijklmnop') as word
      from generate_series(0, 4095) i;
create temp table phrases as
    select p as id,
           (select string_agg(v.word, ' ' order by k)
              from generate_series(1, 4 + p % 9) k
              join vocab v on v.id = hashint4(p * 100 + k) & 4095) as phrase
      from generate_series(0, 1023) p;
create table notes (
    id int primary key,
    author text not null,
    created_at timestamptz not null,
    body text not null
);
insert into notes
    select r, 'user' || (r % 997), timestamptz '2026-01-01' + r * interval '37 seconds',
           (select string_agg(ph.phrase || ' ' || left(md5((r * 1000 + k)::text), 2 + k % 5), E'.\n' order by k)
              from generate_series(1, 30 + r % 20) k
              join phrases ph on ph.id = hashint4(r * 1000 + k) & 1023)
      from generate_series(1, :rows) r;
