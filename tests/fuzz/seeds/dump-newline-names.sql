--
-- PostgreSQL database dump
--

\restrict py3Kr8VitMUuMxlZXKj1flhjCY2eBcNHohBqxAbo4E0NfEs4lF4SU6JPrZfAOsq

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
-- Data for Name: a b; Type: TABLE DATA; Schema: public; Owner: postgres
--

SET SESSION AUTHORIZATION DEFAULT;

ALTER TABLE public."a
b" DISABLE TRIGGER ALL;

COPY public."a
b" ("c
d", "e""f") FROM stdin;
1	x\ny
\.


ALTER TABLE public."a
b" ENABLE TRIGGER ALL;

--
-- PostgreSQL database dump complete
--

\unrestrict py3Kr8VitMUuMxlZXKj1flhjCY2eBcNHohBqxAbo4E0NfEs4lF4SU6JPrZfAOsq

