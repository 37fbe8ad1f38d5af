-- Undo 0004.sketch. The sketches and the costs are lost: nothing older can hold them.
--
-- histogram becomes NOT NULL again, so rows whose writer stopped filling it get one derived
-- from their sketch: each 1 % bucket's value is put in the √2 bucket it falls in. That is
-- approximate only where a 1 % bucket straddles a √2 bound (a value up to 1 % below a bound can
-- be counted just above it), well inside the histogram's own 41 % resolution.

UPDATE observability.metrics_aggregates AS m
SET histogram = (
    SELECT array_agg(coalesce(h.n, 0)::bigint ORDER BY i.i)
    FROM generate_series(0, 39) AS i(i)
    LEFT JOIN (
        SELECT CASE
                   WHEN b.v < 1 THEN 0
                   ELSE least(39, floor(2 * ln(b.v) / ln(2.0::double precision))::integer + 1)
               END AS bucket,
               sum(b.n) AS n
        FROM (
            SELECT CASE WHEN e >> 44 = -524288 THEN 0.0::double precision
                        ELSE power(observability.sketch_gamma(), (e >> 44)::double precision)
                             * (2.0 / (observability.sketch_gamma() + 1.0))
                   END AS v,
                   e & 17592186044415 AS n
            FROM unnest(m.sketch) AS e
        ) AS b
        GROUP BY 1
    ) AS h ON h.bucket = i.i
)
WHERE m.histogram IS NULL;

ALTER TABLE observability.metrics_aggregates ALTER COLUMN histogram SET NOT NULL;
COMMENT ON COLUMN observability.metrics_aggregates.histogram IS
    '40 log-scale buckets: [0] < 1; [i] in [sqrt(2)^(i-1), sqrt(2)^i) for i in 1..38; [39] >= sqrt(2)^38';

DROP FUNCTION observability.sketch_quantile(bigint[], double precision);
DROP FUNCTION observability.sketch_count(bigint[]);
DROP AGGREGATE observability.sketch_of(double precision);
DROP FUNCTION observability._sketch_accumulate_value(bigint[], double precision);
DROP AGGREGATE observability.sketch_merge(bigint[]);
DROP FUNCTION observability._sketch_accumulate(bigint[], bigint[]);
DROP FUNCTION observability.sketch_add(bigint[], bigint[]);
DROP FUNCTION observability.sketch_compact(bigint[]);
DROP FUNCTION observability.sketch_key(double precision);
DROP FUNCTION observability.sketch_gamma();

ALTER TABLE observability.metrics_aggregates DROP COLUMN sketch;
ALTER TABLE observability.spans
    DROP COLUMN price_version,
    DROP COLUMN price_source,
    DROP COLUMN cost_usd;
