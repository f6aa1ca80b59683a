-- A small supplier-invoice database for the demo (`make demo`).
create schema if not exists billing;
create table billing.suppliers (
    id serial primary key,
    name text not null,
    iban text,
    created_at timestamptz not null default now()
);
create table billing.invoices (
    id bigserial primary key,
    supplier_id int not null references billing.suppliers(id),
    number text not null,
    issued_on date not null,
    amount numeric(12,2) not null,
    currency char(3) not null default 'EUR',
    note text
);
create index on billing.invoices (supplier_id, issued_on);
create view billing.open_amounts as
    select supplier_id, sum(amount) as total from billing.invoices group by supplier_id;
insert into billing.suppliers (name, iban)
    select 'Supplier ' || i || ' GmbH', 'DE' || lpad(i::text, 20, '0') from generate_series(1, 500) i;
insert into billing.invoices (supplier_id, number, issued_on, amount, note)
    select 1 + i % 500, 'INV-' || i, date '2026-01-01' + (i % 330), (i % 10000) / 7.0,
           case when i % 13 = 0 then E'paid in two parts;\ttab and ''quote''' end
      from generate_series(1, :rows) i;
