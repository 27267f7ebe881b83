\restrict dbmate

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

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: inbox_batches; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbox_batches (
    batch_id uuid NOT NULL,
    received_at timestamp with time zone NOT NULL,
    callbacks integer NOT NULL,
    ids integer NOT NULL,
    data bytea NOT NULL,
    last_received_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT inbox_batches_callbacks_check CHECK ((callbacks >= 0)),
    CONSTRAINT inbox_batches_ids_check CHECK ((ids >= 0))
)
WITH (toast_tuple_target='8160', autovacuum_vacuum_scale_factor='0', autovacuum_vacuum_threshold='1000', autovacuum_vacuum_cost_delay='0');
ALTER TABLE ONLY public.inbox_batches ALTER COLUMN data SET STORAGE EXTERNAL;


--
-- Name: inbox_quarantine; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbox_quarantine (
    batch_id uuid NOT NULL,
    received_at timestamp with time zone NOT NULL,
    callbacks integer NOT NULL,
    ids integer NOT NULL,
    data bytea NOT NULL,
    error text NOT NULL,
    quarantined_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: merged_batches; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.merged_batches (
    batch_id uuid NOT NULL,
    merged_at timestamp with time zone DEFAULT now() NOT NULL
)
WITH (autovacuum_vacuum_scale_factor='0', autovacuum_vacuum_threshold='10000', autovacuum_vacuum_cost_delay='0');


--
-- Name: objects; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.objects (
    id bigint NOT NULL,
    last_seen timestamp with time zone NOT NULL
)
WITH (autovacuum_vacuum_scale_factor='0', autovacuum_vacuum_threshold='5000', autovacuum_vacuum_cost_delay='0');


--
-- Name: pending; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.pending (
    object_id bigint NOT NULL,
    received_at timestamp with time zone NOT NULL,
    due_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    claim_token uuid,
    claimed_received_at timestamp with time zone,
    looked_up_at timestamp with time zone
)
WITH (fillfactor='70', autovacuum_vacuum_scale_factor='0', autovacuum_vacuum_threshold='5000', autovacuum_vacuum_cost_delay='0');


--
-- Name: replica_watermarks; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.replica_watermarks (
    replica_id text NOT NULL,
    low_watermark timestamp with time zone NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    stopped boolean DEFAULT false NOT NULL
);


--
-- Name: schema_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_migrations (
    version character varying NOT NULL
);


--
-- Name: spool_replays; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.spool_replays (
    segment_id uuid NOT NULL,
    replayed_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: inbox_batches inbox_batches_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox_batches
    ADD CONSTRAINT inbox_batches_pkey PRIMARY KEY (batch_id);


--
-- Name: inbox_quarantine inbox_quarantine_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox_quarantine
    ADD CONSTRAINT inbox_quarantine_pkey PRIMARY KEY (batch_id);


--
-- Name: merged_batches merged_batches_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.merged_batches
    ADD CONSTRAINT merged_batches_pkey PRIMARY KEY (batch_id);


--
-- Name: objects objects_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.objects
    ADD CONSTRAINT objects_pkey PRIMARY KEY (id);


--
-- Name: pending pending_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.pending
    ADD CONSTRAINT pending_pkey PRIMARY KEY (object_id);


--
-- Name: replica_watermarks replica_watermarks_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.replica_watermarks
    ADD CONSTRAINT replica_watermarks_pkey PRIMARY KEY (replica_id);


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: spool_replays spool_replays_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.spool_replays
    ADD CONSTRAINT spool_replays_pkey PRIMARY KEY (segment_id);


--
-- Name: inbox_batches_received_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX inbox_batches_received_at_idx ON public.inbox_batches USING btree (received_at);


--
-- Name: objects_last_seen_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX objects_last_seen_idx ON public.objects USING btree (last_seen);


--
-- Name: pending_done_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX pending_done_idx ON public.pending USING btree (received_at) WHERE (due_at = '-infinity'::timestamp with time zone);


--
-- Name: pending_due_at_idx; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX pending_due_at_idx ON public.pending USING btree (due_at);


--
-- PostgreSQL database dump complete
--

\unrestrict dbmate


--
-- Dbmate schema migrations
--

INSERT INTO public.schema_migrations (version) VALUES
    ('20261125000001'),
    ('20261125000002'),
    ('20261125000003'),
    ('20261125000004'),
    ('20261125000005'),
    ('20261202000001'),
    ('20261202000002'),
    ('20261206000001'),
    ('20261206000002'),
    ('20261206000003');
