-- Percentiles within 1 % (issue 15): a mergeable DDSketch per roll-up row, and the cost of LLM calls.
--
-- metrics_aggregates gains `sketch`, a sparse sketch of relative accuracy ALPHA = 0.01
-- (tracewriter/_sketch.py owns the mapping; the constants below are its twin, and
-- tests/test_sketch_sql.py checks that both compute the same buckets and quantiles):
--   bucket key k = ceil(ln(v) / ln(gamma)), gamma = (1 + 0.01) / (1 - 0.01), for v > 0;
--   v <= 0 counts in the zero bucket, key -2^19, which reads back as 0;
--   each occupied bucket is one bigint, k * 2^44 + count, sorted by key (= sorted as integers).
-- Merging adds the counts of equal keys: exact, associative and commutative, so minutes,
-- models, writers and processes merge with GROUP BY:
--   SELECT model, observability.sketch_quantile(observability.sketch_merge(sketch), 0.99) ...
--
-- What this migration cannot convert: the existing `histogram` (40 buckets a factor of √2
-- apart) says only that a value lies somewhere in a bucket up to 41 % wide, so no sketch with
-- 1 % buckets can be derived from it. Rows written before this migration keep their histogram
-- and get no sketch (NULL); sketch_merge skips them, so a window that reaches back before the
-- upgrade reads percentiles from the newer rows only — compare count with
-- observability.sketch_count(...) to see how much of a window has sketches. Where the spans
-- of that window are still retained, the roll-ups can be recomputed from them with
-- observability.sketch_of(duration_ms) (spans are head-sampled; roll-ups are not, so do this
-- only for windows written without sampling). `histogram` stays, now nullable, so that a
-- writer may stop filling it; it is dropped in a later migration once readers have moved.
--
-- spans gains cost_usd (numeric, USD, exact decimal as the price table gives it),
-- price_source and price_version. Cost rolls up like tokens: as the metric 'llm.cost_usd' in
-- metrics_aggregates (count, sum, min, max and a sketch of cost per call), so it needs no
-- column there. ALTER TABLE on the parent reaches every partition and chunk, on the native
-- and the TimescaleDB path alike; ensure_partitions builds new partitions LIKE the parent.
-- depends: 0003.retention_and_status

ALTER TABLE observability.metrics_aggregates ADD COLUMN sketch bigint[];
ALTER TABLE observability.metrics_aggregates ALTER COLUMN histogram DROP NOT NULL;

COMMENT ON COLUMN observability.metrics_aggregates.sketch IS
    'DDSketch, relative accuracy 1 %: one bigint per occupied bucket, key * 2^44 + count, '
    'sorted; read with observability.sketch_quantile, merge rows with observability.sketch_merge; '
    'NULL for rows written before migration 0004';
COMMENT ON COLUMN observability.metrics_aggregates.histogram IS
    '40 log-scale buckets: [0] < 1; [i] in [sqrt(2)^(i-1), sqrt(2)^i) for i in 1..38; [39] >= sqrt(2)^38. '
    'Superseded by sketch (migration 0004); NULL where a writer no longer fills it';

ALTER TABLE observability.spans
    ADD COLUMN cost_usd numeric,
    ADD COLUMN price_source text,
    ADD COLUMN price_version text;

COMMENT ON COLUMN observability.spans.cost_usd IS
    'cost of the LLM call in USD, computed by the writer from model, provider and token counts; '
    'NULL when the price of the model is unknown. OpenTelemetry has a proposal for the same fact '
    'as span attributes (gen_ai.usage.cost.*), not yet part of the GenAI semantic conventions';
COMMENT ON COLUMN observability.spans.price_source IS
    'where cost_usd''s prices came from: ''genai-prices'' or ''user'' (prices configured per model)';
COMMENT ON COLUMN observability.spans.price_version IS
    'version of the price data: the genai-prices package version, or a digest of the user prices';

-- Sketch functions. All IMMUTABLE SQL, so the planner can inline them.

CREATE FUNCTION observability.sketch_gamma()
RETURNS double precision
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    -- the same double as GAMMA in tracewriter/_sketch.py: (1 + ALPHA) / (1 - ALPHA), ALPHA = 0.01
    SELECT (1.0::double precision + 0.01::double precision) / (1.0::double precision - 0.01::double precision)
$fn$;

COMMENT ON FUNCTION observability.sketch_gamma() IS
    'the ratio of consecutive sketch bucket bounds, (1 + 0.01) / (1 - 0.01)';

CREATE FUNCTION observability.sketch_key(v double precision)
RETURNS bigint
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
AS $fn$
    -- NaN and +Infinity have no bucket (NULL); v <= 0 (and -Infinity) is the zero bucket.
    SELECT CASE
        WHEN v = 'NaN'::double precision OR v = 'Infinity'::double precision THEN NULL
        WHEN v <= 0 THEN -524288::bigint
        ELSE ceil(ln(v) / ln(observability.sketch_gamma()))::bigint
    END
$fn$;

COMMENT ON FUNCTION observability.sketch_key(double precision) IS
    'the sketch bucket of a value: ceil(ln(v) / ln(gamma)); -2^19 (the zero bucket) for v <= 0; '
    'NULL for NaN and +Infinity';

CREATE FUNCTION observability.sketch_compact(s bigint[])
RETURNS bigint[]
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
AS $fn$
    -- One element per key, counts summed, sorted by key. A count saturates at 2^44 - 1 instead
    -- of spilling into the key bits.
    SELECT coalesce(array_agg(g.k * 17592186044416 + least(g.n, 17592186044415)::bigint ORDER BY g.k),
                    '{}'::bigint[])
    FROM (
        SELECT e >> 44 AS k, sum(e & 17592186044415) AS n
        FROM unnest(s) AS e
        GROUP BY 1
    ) AS g
    WHERE g.n > 0
$fn$;

COMMENT ON FUNCTION observability.sketch_compact(bigint[]) IS
    'the canonical form of a sketch: one element per bucket, counts summed, sorted';

CREATE FUNCTION observability.sketch_add(a bigint[], b bigint[])
RETURNS bigint[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE observability.sketch_compact(a || b)
    END
$fn$;

COMMENT ON FUNCTION observability.sketch_add(bigint[], bigint[]) IS
    'the merge of two sketches (bucket counts added); a NULL side counts as empty';

-- The aggregate's state is a plain concatenation, compacted only when it grows past 4,096
-- elements: merging 1,440 minute rows then costs a few compactions, not one sort per row.
CREATE FUNCTION observability._sketch_accumulate(state bigint[], s bigint[])
RETURNS bigint[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT CASE
        WHEN s IS NULL THEN state
        WHEN state IS NULL THEN s
        WHEN cardinality(state) + cardinality(s) > 4096 THEN observability.sketch_compact(state || s)
        ELSE state || s
    END
$fn$;

CREATE AGGREGATE observability.sketch_merge(bigint[]) (
    SFUNC = observability._sketch_accumulate,
    STYPE = bigint[],
    COMBINEFUNC = observability._sketch_accumulate,
    FINALFUNC = observability.sketch_compact,
    PARALLEL = SAFE
);

COMMENT ON AGGREGATE observability.sketch_merge(bigint[]) IS
    'merges the sketches of a group of rows; NULL sketches are skipped, NULL if all are';

CREATE FUNCTION observability._sketch_accumulate_value(state bigint[], v double precision)
RETURNS bigint[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $fn$
    SELECT CASE
        WHEN observability.sketch_key(v) IS NULL THEN state  -- NULL, NaN, +Infinity
        ELSE observability._sketch_accumulate(
            state, ARRAY[observability.sketch_key(v) * 17592186044416 + 1])
    END
$fn$;

CREATE AGGREGATE observability.sketch_of(double precision) (
    SFUNC = observability._sketch_accumulate_value,
    STYPE = bigint[],
    COMBINEFUNC = observability._sketch_accumulate,
    FINALFUNC = observability.sketch_compact,
    PARALLEL = SAFE
);

COMMENT ON AGGREGATE observability.sketch_of(double precision) IS
    'the sketch of a column of values, as the writer would build it (NaN, +Infinity and NULLs skipped)';

CREATE FUNCTION observability.sketch_count(s bigint[])
RETURNS bigint
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
AS $fn$
    SELECT coalesce(sum(e & 17592186044415), 0)::bigint FROM unnest(s) AS e
$fn$;

COMMENT ON FUNCTION observability.sketch_count(bigint[]) IS 'how many values a sketch counts';

CREATE FUNCTION observability.sketch_quantile(s bigint[], q double precision)
RETURNS double precision
LANGUAGE sql
IMMUTABLE
STRICT
PARALLEL SAFE
AS $fn$
    -- The value of the bucket holding the ceil(q * n)-th value (at least the first), the rank
    -- percentile_disc(q) answers with: within 1 % of it. A bucket (gamma^(k-1), gamma^k] reads
    -- back as 2 gamma^k / (gamma + 1), the point within 1 % of both ends.
    SELECT CASE
        WHEN r.k = -524288 THEN 0.0::double precision
        ELSE power(observability.sketch_gamma(), r.k::double precision)
             * (2.0 / (observability.sketch_gamma() + 1.0))
    END
    FROM (
        SELECT g.k,
               sum(g.n) OVER (ORDER BY g.k) AS running,
               sum(g.n) OVER () AS total
        FROM (
            SELECT e >> 44 AS k, sum(e & 17592186044415) AS n
            FROM unnest(s) AS e
            GROUP BY 1
        ) AS g
    ) AS r
    WHERE r.total > 0
      AND q <> 'NaN'::double precision  -- no rank; PostgreSQL would order NaN above 1
      -- the epsilon keeps float noise (0.3 * 10 = 3.0000000000000004) from skipping a rank
      AND r.running >= greatest(1, ceil(least(greatest(q, 0.0), 1.0) * r.total - 1e-9))
    ORDER BY r.k
    LIMIT 1
$fn$;

COMMENT ON FUNCTION observability.sketch_quantile(bigint[], double precision) IS
    'the q-quantile (q in [0, 1]) of a sketch, within 1 % of the exact value of the same rank '
    '(percentile_disc''s); NULL for an empty or NULL sketch';
