--
-- PostgreSQL database dump
--

\restrict W5Jh9qLDIP93RH9OioqLwtA2xp9QZD5vllWxrwWPzTCVzVGM2mnJcfcgEcApZIR

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: My Schema; Type: SCHEMA; Schema: -; Owner: postgres
--

CREATE SCHEMA "My Schema";


ALTER SCHEMA "My Schema" OWNER TO postgres;

--
-- Name: s2; Type: SCHEMA; Schema: -; Owner: postgres
--

CREATE SCHEMA s2;


ALTER SCHEMA s2 OWNER TO postgres;

--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: postgres
--

CREATE FUNCTION public.f() RETURNS void
    LANGUAGE sql
    AS $$
COPY public.invoices (id) FROM stdin;
$$;


ALTER FUNCTION public.f() OWNER TO postgres;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: Tab"le; Type: TABLE; Schema: My Schema; Owner: postgres
--

CREATE TABLE "My Schema"."Tab""le" (
    "Col 1" text,
    b integer
);


ALTER TABLE "My Schema"."Tab""le" OWNER TO postgres;

--
-- Name: invoices; Type: TABLE; Schema: public; Owner: postgres
--

CREATE TABLE public.invoices (
    id integer NOT NULL,
    supplier text,
    amount numeric
);


ALTER TABLE public.invoices OWNER TO postgres;

--
-- Name: bin; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.bin (
    b bytea
);


ALTER TABLE s2.bin OWNER TO postgres;

--
-- Name: empty; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.empty (
    x integer
);


ALTER TABLE s2.empty OWNER TO postgres;

--
-- Name: gen; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.gen (
    a integer,
    b integer GENERATED ALWAYS AS ((a * 2)) STORED
);


ALTER TABLE s2.gen OWNER TO postgres;

--
-- Name: nocols; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.nocols (
);


ALTER TABLE s2.nocols OWNER TO postgres;

--
-- Name: parted; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.parted (
    k integer,
    v text
)
PARTITION BY RANGE (k);


ALTER TABLE s2.parted OWNER TO postgres;

--
-- Name: p1; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.p1 (
    k integer,
    v text
);


ALTER TABLE s2.p1 OWNER TO postgres;

--
-- Name: p2; Type: TABLE; Schema: s2; Owner: postgres
--

CREATE TABLE s2.p2 (
    k integer,
    v text
);


ALTER TABLE s2.p2 OWNER TO postgres;

--
-- Name: p1; Type: TABLE ATTACH; Schema: s2; Owner: postgres
--

ALTER TABLE ONLY s2.parted ATTACH PARTITION s2.p1 FOR VALUES FROM (0) TO (10);


--
-- Name: p2; Type: TABLE ATTACH; Schema: s2; Owner: postgres
--

ALTER TABLE ONLY s2.parted ATTACH PARTITION s2.p2 FOR VALUES FROM (10) TO (20);


--
-- Data for Name: Tab"le; Type: TABLE DATA; Schema: My Schema; Owner: postgres
--

COPY "My Schema"."Tab""le" ("Col 1", b) FROM stdin;
ünï	1
\.


--
-- Data for Name: invoices; Type: TABLE DATA; Schema: public; Owner: postgres
--

COPY public.invoices (id, supplier, amount) FROM stdin;
1	acme	1.5
2	tab\there\nnl\\bs	\N
\.


--
-- Data for Name: bin; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.bin (b) FROM stdin;
\\x00ff0a
\.


--
-- Data for Name: empty; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.empty (x) FROM stdin;
\.


--
-- Data for Name: gen; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.gen (a) FROM stdin;
1
2
\.


--
-- Data for Name: nocols; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.nocols  FROM stdin;


\.


--
-- Data for Name: p1; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.p1 (k, v) FROM stdin;
1	a
\.


--
-- Data for Name: p2; Type: TABLE DATA; Schema: s2; Owner: postgres
--

COPY s2.p2 (k, v) FROM stdin;
15	b
\.


--
-- Name: invoices invoices_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.invoices
    ADD CONSTRAINT invoices_pkey PRIMARY KEY (id);


--
-- PostgreSQL database dump complete
--

\unrestrict W5Jh9qLDIP93RH9OioqLwtA2xp9QZD5vllWxrwWPzTCVzVGM2mnJcfcgEcApZIR

