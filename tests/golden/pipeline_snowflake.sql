-- units
SELECT first_exposures.variant_key, TO_DATE(CONVERT_TIMEZONE('UTC', first_exposures.exposed_at)) AS day, count(*) AS n, min(first_exposures.exposed_at) AS first, max(first_exposures.exposed_at) AS last 
FROM (SELECT ranked_exposures.exposure_id AS exposure_id, ranked_exposures.unit_id AS unit_id, ranked_exposures.variant_key AS variant_key, ranked_exposures.exposed_at AS exposed_at 
FROM (SELECT experiment_exposures.exposure_id AS exposure_id, experiment_exposures.unit_id AS unit_id, experiment_exposures.variant_key AS variant_key, experiment_exposures.exposed_at AS exposed_at, row_number() OVER (PARTITION BY experiment_exposures.unit_id ORDER BY experiment_exposures.exposed_at, experiment_exposures.exposure_id) AS exposure_rank, min(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS lowest_variant, max(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS highest_variant 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures) AS ranked_exposures 
WHERE ranked_exposures.exposure_rank = 1 AND ranked_exposures.lowest_variant = ranked_exposures.highest_variant) AS first_exposures GROUP BY first_exposures.variant_key, TO_DATE(CONVERT_TIMEZONE('UTC', first_exposures.exposed_at));

-- variant_days
WITH unit_values AS 
(SELECT u.exposure_id AS exposure_id, u.variant_key AS variant_key, u.exposed_at AS exposed_at, u.w0 AS w0, u.m1_y AS m1_y, u.m1_pre AS m1_pre, u.m2_y AS m2_y, u.m2_pre AS m2_pre, u.m3_num AS m3_num, u.m3_den AS m3_den, u.m6_answer AS m6_answer, u.m7_y AS m7_y, u.events_post AS events_post, u.events_pre AS events_pre 
FROM (SELECT first_exposures.exposure_id AS exposure_id, min(first_exposures.variant_key) AS variant_key, min(first_exposures.exposed_at) AS exposed_at, BITOR_AGG(CASE WHEN (parcours_events.occurred_at >= first_exposures.exposed_at) THEN CAST(CASE parcours_events.step WHEN 'landing' THEN 128 WHEN 'cart' THEN 262144 WHEN 'payment' THEN 536870912 ELSE 0 END AS BIGINT) + CASE WHEN (parcours_events.type = 'friction') THEN CAST(CASE parcours_events.step WHEN 'landing' THEN 256 WHEN 'cart' THEN 524288 WHEN 'payment' THEN 1073741824 ELSE 0 END AS BIGINT) * CAST(CASE parcours_events.friction_kind WHEN 'error' THEN 1 WHEN 'abandonment' THEN 2 WHEN 'retry' THEN 4 WHEN 'rage_click' THEN 8 WHEN 'dead_click' THEN 16 WHEN 'slow_step' THEN 32 WHEN 'back_navigation' THEN 64 WHEN 'form_error' THEN 128 WHEN 'support_contact' THEN 256 WHEN 'bounce' THEN 512 ELSE 0 END AS BIGINT) ELSE 0 END + CASE WHEN (parcours_events.type = 'friction' AND parcours_events.step IS NOT NULL AND (parcours_events.step NOT IN ('landing', 'cart', 'payment'))) THEN 1 ELSE 0 END + CASE WHEN (parcours_events.name = 'purchase') THEN 2 ELSE 0 END + CASE WHEN (parcours_events.type = 'friction' AND parcours_events.friction_kind = 'error' AND parcours_events.step = 'payment') THEN 8 ELSE 0 END + CASE WHEN (parcours_events.type = 'friction') THEN 32 ELSE 0 END ELSE CASE WHEN (parcours_events.name = 'purchase') THEN 4 ELSE 0 END + CASE WHEN (parcours_events.type = 'friction' AND parcours_events.friction_kind = 'error' AND parcours_events.step = 'payment') THEN 16 ELSE 0 END + CASE WHEN (parcours_events.type = 'friction') THEN 64 ELSE 0 END END) AS w0, sum(CASE WHEN (parcours_events.name = 'purchase' AND parcours_events.occurred_at >= first_exposures.exposed_at) THEN coalesce(CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END, 0.0) ELSE 0.0 END) AS m1_y, sum(CASE WHEN (parcours_events.name = 'purchase' AND parcours_events.occurred_at < first_exposures.exposed_at) THEN coalesce(CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END, 0.0) ELSE 0.0 END) AS m1_pre, sum(CASE WHEN (parcours_events.name = 'page_view' AND parcours_events.occurred_at >= first_exposures.exposed_at) THEN 1 ELSE 0 END) AS m2_y, sum(CASE WHEN (parcours_events.name = 'page_view' AND parcours_events.occurred_at < first_exposures.exposed_at) THEN 1 ELSE 0 END) AS m2_pre, sum(CASE WHEN (parcours_events.name = 'purchase' AND parcours_events.occurred_at >= first_exposures.exposed_at) THEN coalesce(CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END, 1.0) ELSE 0.0 END) AS m3_num, sum(CASE WHEN (parcours_events.name = 'session' AND parcours_events.occurred_at >= first_exposures.exposed_at) THEN coalesce(CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END, 1.0) ELSE 0.0 END) AS m3_den, max(CASE WHEN (parcours_events.occurred_at >= first_exposures.exposed_at AND parcours_events.name = 'survey' AND parcours_events.value BETWEEN 0 AND 10) THEN CONCAT(LPAD(TO_VARCHAR(DATE_PART(EPOCH_MICROSECOND, parcours_events.occurred_at)), 20, '0'), LPAD(TO_VARCHAR(coalesce(parcours_events.id, 0)), 20, '0'), TO_VARCHAR(CASE WHEN (parcours_events.value >= 9) THEN 2 WHEN (parcours_events.value <= 6) THEN 1 ELSE 0 END)) END) AS m6_answer, min(CASE WHEN (parcours_events.name = 'purchase' AND parcours_events.occurred_at >= first_exposures.exposed_at) THEN parcours_events.occurred_at END) AS m7_y, sum(CASE WHEN (parcours_events.occurred_at >= first_exposures.exposed_at AND (parcours_events.name = 'purchase' OR parcours_events.name = 'purchase' OR parcours_events.name = 'page_view' OR parcours_events.name IN ('purchase', 'session') OR parcours_events.type = 'friction' AND parcours_events.friction_kind = 'error' AND parcours_events.step = 'payment' OR parcours_events.type = 'friction' OR parcours_events.name = 'survey' OR parcours_events.name = 'purchase')) THEN 1 ELSE 0 END) AS events_post, sum(CASE WHEN (parcours_events.occurred_at < first_exposures.exposed_at AND (parcours_events.name = 'purchase' OR parcours_events.name = 'purchase' OR parcours_events.name = 'page_view' OR parcours_events.name IN ('purchase', 'session') OR parcours_events.type = 'friction' AND parcours_events.friction_kind = 'error' AND parcours_events.step = 'payment' OR parcours_events.type = 'friction' OR parcours_events.name = 'survey' OR parcours_events.name = 'purchase')) THEN 1 ELSE 0 END) AS events_pre 
FROM parcours_events JOIN (SELECT ranked_exposures.exposure_id AS exposure_id, ranked_exposures.unit_id AS unit_id, ranked_exposures.variant_key AS variant_key, ranked_exposures.exposed_at AS exposed_at 
FROM (SELECT experiment_exposures.exposure_id AS exposure_id, experiment_exposures.unit_id AS unit_id, experiment_exposures.variant_key AS variant_key, experiment_exposures.exposed_at AS exposed_at, row_number() OVER (PARTITION BY experiment_exposures.unit_id ORDER BY experiment_exposures.exposed_at, experiment_exposures.exposure_id) AS exposure_rank, min(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS lowest_variant, max(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS highest_variant 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures) AS ranked_exposures 
WHERE ranked_exposures.exposure_rank = 1 AND ranked_exposures.lowest_variant = ranked_exposures.highest_variant) AS first_exposures ON parcours_events.unit_id = first_exposures.unit_id 
WHERE (parcours_events.occurred_at >= first_exposures.exposed_at AND ((DATEDIFF('microsecond', first_exposures.exposed_at, parcours_events.occurred_at) / 3600000000.0) < 24.0) OR parcours_events.occurred_at < first_exposures.exposed_at AND ((DATEDIFF('microsecond', parcours_events.occurred_at, first_exposures.exposed_at) / 3600000000.0) < 24.0)) AND (parcours_events.step IS NOT NULL OR parcours_events.name = 'purchase' OR parcours_events.name = 'purchase' OR parcours_events.name = 'page_view' OR parcours_events.name IN ('purchase', 'session') OR parcours_events.type = 'friction' AND parcours_events.friction_kind = 'error' AND parcours_events.step = 'payment' OR parcours_events.type = 'friction' OR parcours_events.name = 'survey' OR parcours_events.name = 'purchase') GROUP BY first_exposures.exposure_id) AS u)
 SELECT unit_values.variant_key, TO_DATE(CONVERT_TIMEZONE('UTC', unit_values.exposed_at)) AS day, COUNT_IF((BITAND(unit_values.w0, 2) = 2)) AS m0_sum, COUNT_IF((BITAND(unit_values.w0, 4) = 4)) AS m0_pre_sum, COUNT_IF((BITAND(unit_values.w0, 6) = 6)) AS m0_cross_sum, sum(CASE WHEN (unit_values.m1_y > 150.0) THEN 150.0 ELSE unit_values.m1_y END) AS m1_sum, sum(CASE WHEN (unit_values.m1_y > 150.0) THEN 150.0 ELSE unit_values.m1_y END * CASE WHEN (unit_values.m1_y > 150.0) THEN 150.0 ELSE unit_values.m1_y END) AS m1_sum_squares, sum(CASE WHEN (unit_values.m1_pre > 150.0) THEN 150.0 ELSE unit_values.m1_pre END) AS m1_pre_sum, sum(CASE WHEN (unit_values.m1_pre > 150.0) THEN 150.0 ELSE unit_values.m1_pre END * CASE WHEN (unit_values.m1_pre > 150.0) THEN 150.0 ELSE unit_values.m1_pre END) AS m1_pre_sum_squares, sum(CASE WHEN (unit_values.m1_pre > 150.0) THEN 150.0 ELSE unit_values.m1_pre END * CASE WHEN (unit_values.m1_y > 150.0) THEN 150.0 ELSE unit_values.m1_y END) AS m1_cross_sum, sum(CASE WHEN (unit_values.m2_y > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_y END) AS m2_sum, sum(CASE WHEN (unit_values.m2_y > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_y END * CASE WHEN (unit_values.m2_y > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_y END) AS m2_sum_squares, sum(CASE WHEN (unit_values.m2_pre > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_pre END) AS m2_pre_sum, sum(CASE WHEN (unit_values.m2_pre > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_pre END * CASE WHEN (unit_values.m2_pre > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_pre END) AS m2_pre_sum_squares, sum(CASE WHEN (unit_values.m2_pre > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_pre END * CASE WHEN (unit_values.m2_y > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) ELSE unit_values.m2_y END) AS m2_cross_sum, sum(CASE WHEN (unit_values.m3_num > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_num END) AS m3_num_sum, sum(CASE WHEN (unit_values.m3_num > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_num END * CASE WHEN (unit_values.m3_num > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_num END) AS m3_num_sum_squares, sum(CASE WHEN (unit_values.m3_den > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_den END) AS m3_den_sum, sum(CASE WHEN (unit_values.m3_den > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_den END * CASE WHEN (unit_values.m3_den > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_den END) AS m3_den_sum_squares, sum(CASE WHEN (unit_values.m3_num > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_num END * CASE WHEN (unit_values.m3_den > (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680)) THEN (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) ELSE unit_values.m3_den END) AS m3_num_den_sum, COUNT_IF((BITAND(unit_values.w0, 8) = 8)) AS m4_sum, COUNT_IF((BITAND(unit_values.w0, 16) = 16)) AS m4_pre_sum, COUNT_IF((BITAND(unit_values.w0, 24) = 24)) AS m4_cross_sum, COUNT_IF((BITAND(unit_values.w0, 32) = 32)) AS m5_sum, COUNT_IF((BITAND(unit_values.w0, 64) = 64)) AS m5_pre_sum, COUNT_IF((BITAND(unit_values.w0, 96) = 96)) AS m5_cross_sum, count(unit_values.m6_answer) AS m6_n, COUNT_IF(CAST(RIGHT(unit_values.m6_answer, 1) AS INTEGER) = 2) AS m6_promoters, COUNT_IF(CAST(RIGHT(unit_values.m6_answer, 1) AS INTEGER) = 1) AS m6_detractors, count(unit_values.m7_y) AS m7_n, sum((DATEDIFF('microsecond', unit_values.exposed_at, unit_values.m7_y) / 3600000000.0)) AS m7_sum, sum((DATEDIFF('microsecond', unit_values.exposed_at, unit_values.m7_y) / 3600000000.0) * (DATEDIFF('microsecond', unit_values.exposed_at, unit_values.m7_y) / 3600000000.0)) AS m7_sum_squares, COUNT_IF((BITAND(unit_values.w0, 1) = 1)) AS extra_friction, COUNT_IF((BITAND(unit_values.w0, 128) = 128)) AS reach_0, COUNT_IF((BITAND(unit_values.w0, 256) = 256)) AS fric_0_0, COUNT_IF((BITAND(unit_values.w0, 512) = 512)) AS fric_0_1, COUNT_IF((BITAND(unit_values.w0, 1024) = 1024)) AS fric_0_2, COUNT_IF((BITAND(unit_values.w0, 2048) = 2048)) AS fric_0_3, COUNT_IF((BITAND(unit_values.w0, 4096) = 4096)) AS fric_0_4, COUNT_IF((BITAND(unit_values.w0, 8192) = 8192)) AS fric_0_5, COUNT_IF((BITAND(unit_values.w0, 16384) = 16384)) AS fric_0_6, COUNT_IF((BITAND(unit_values.w0, 32768) = 32768)) AS fric_0_7, COUNT_IF((BITAND(unit_values.w0, 65536) = 65536)) AS fric_0_8, COUNT_IF((BITAND(unit_values.w0, 131072) = 131072)) AS fric_0_9, COUNT_IF((BITAND(unit_values.w0, 262144) = 262144)) AS reach_1, COUNT_IF((BITAND(unit_values.w0, 524288) = 524288)) AS fric_1_0, COUNT_IF((BITAND(unit_values.w0, 1048576) = 1048576)) AS fric_1_1, COUNT_IF((BITAND(unit_values.w0, 2097152) = 2097152)) AS fric_1_2, COUNT_IF((BITAND(unit_values.w0, 4194304) = 4194304)) AS fric_1_3, COUNT_IF((BITAND(unit_values.w0, 8388608) = 8388608)) AS fric_1_4, COUNT_IF((BITAND(unit_values.w0, 16777216) = 16777216)) AS fric_1_5, COUNT_IF((BITAND(unit_values.w0, 33554432) = 33554432)) AS fric_1_6, COUNT_IF((BITAND(unit_values.w0, 67108864) = 67108864)) AS fric_1_7, COUNT_IF((BITAND(unit_values.w0, 134217728) = 134217728)) AS fric_1_8, COUNT_IF((BITAND(unit_values.w0, 268435456) = 268435456)) AS fric_1_9, COUNT_IF((BITAND(unit_values.w0, 536870912) = 536870912)) AS reach_2, COUNT_IF((BITAND(unit_values.w0, 1073741824) = 1073741824)) AS fric_2_0, COUNT_IF((BITAND(unit_values.w0, 2147483648) = 2147483648)) AS fric_2_1, COUNT_IF((BITAND(unit_values.w0, 4294967296) = 4294967296)) AS fric_2_2, COUNT_IF((BITAND(unit_values.w0, 8589934592) = 8589934592)) AS fric_2_3, COUNT_IF((BITAND(unit_values.w0, 17179869184) = 17179869184)) AS fric_2_4, COUNT_IF((BITAND(unit_values.w0, 34359738368) = 34359738368)) AS fric_2_5, COUNT_IF((BITAND(unit_values.w0, 68719476736) = 68719476736)) AS fric_2_6, COUNT_IF((BITAND(unit_values.w0, 137438953472) = 137438953472)) AS fric_2_7, COUNT_IF((BITAND(unit_values.w0, 274877906944) = 274877906944)) AS fric_2_8, COUNT_IF((BITAND(unit_values.w0, 549755813888) = 549755813888)) AS fric_2_9, sum(unit_values.events_post) AS events_post, sum(unit_values.events_pre) AS events_pre, 150.0 AS cap1_y, (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_1 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m2_y AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_1 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4940) AS cap2_y, (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_2 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_num AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_2 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) AS cap3_num, (SELECT CASE WHEN (min(cap_ranks.v) > 0.0) THEN min(cap_ranks.v) ELSE 0.0 END AS anon_3 
FROM (SELECT cap_values.v AS v, sum(cap_values.w) OVER (ORDER BY cap_values.v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS at_or_below 
FROM (SELECT unit_values.m3_den AS v, 1 AS w 
FROM unit_values UNION ALL SELECT 0.0 AS v, 5200 - (SELECT count(*) AS count_3 
FROM unit_values) AS w) AS cap_values) AS cap_ranks 
WHERE cap_ranks.at_or_below >= 4680) AS cap3_den 
FROM unit_values GROUP BY unit_values.variant_key, TO_DATE(CONVERT_TIMEZONE('UTC', unit_values.exposed_at));

-- friction_outside
SELECT s.variant_key, s.step, sum(s.error) AS error, sum(s.abandonment) AS abandonment, sum(s.retry) AS retry, sum(s.rage_click) AS rage_click, sum(s.dead_click) AS dead_click, sum(s.slow_step) AS slow_step, sum(s.back_navigation) AS back_navigation, sum(s.form_error) AS form_error, sum(s.support_contact) AS support_contact, sum(s.bounce) AS bounce 
FROM (SELECT first_exposures.variant_key AS variant_key, parcours_events.step AS step, max(CASE WHEN (parcours_events.friction_kind = 'error') THEN 1 ELSE 0 END) AS error, max(CASE WHEN (parcours_events.friction_kind = 'abandonment') THEN 1 ELSE 0 END) AS abandonment, max(CASE WHEN (parcours_events.friction_kind = 'retry') THEN 1 ELSE 0 END) AS retry, max(CASE WHEN (parcours_events.friction_kind = 'rage_click') THEN 1 ELSE 0 END) AS rage_click, max(CASE WHEN (parcours_events.friction_kind = 'dead_click') THEN 1 ELSE 0 END) AS dead_click, max(CASE WHEN (parcours_events.friction_kind = 'slow_step') THEN 1 ELSE 0 END) AS slow_step, max(CASE WHEN (parcours_events.friction_kind = 'back_navigation') THEN 1 ELSE 0 END) AS back_navigation, max(CASE WHEN (parcours_events.friction_kind = 'form_error') THEN 1 ELSE 0 END) AS form_error, max(CASE WHEN (parcours_events.friction_kind = 'support_contact') THEN 1 ELSE 0 END) AS support_contact, max(CASE WHEN (parcours_events.friction_kind = 'bounce') THEN 1 ELSE 0 END) AS bounce 
FROM (SELECT ranked_exposures.exposure_id AS exposure_id, ranked_exposures.unit_id AS unit_id, ranked_exposures.variant_key AS variant_key, ranked_exposures.exposed_at AS exposed_at 
FROM (SELECT experiment_exposures.exposure_id AS exposure_id, experiment_exposures.unit_id AS unit_id, experiment_exposures.variant_key AS variant_key, experiment_exposures.exposed_at AS exposed_at, row_number() OVER (PARTITION BY experiment_exposures.unit_id ORDER BY experiment_exposures.exposed_at, experiment_exposures.exposure_id) AS exposure_rank, min(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS lowest_variant, max(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS highest_variant 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures) AS ranked_exposures 
WHERE ranked_exposures.exposure_rank = 1 AND ranked_exposures.lowest_variant = ranked_exposures.highest_variant) AS first_exposures JOIN parcours_events ON parcours_events.unit_id = first_exposures.unit_id 
WHERE parcours_events.occurred_at >= first_exposures.exposed_at AND ((DATEDIFF('microsecond', first_exposures.exposed_at, parcours_events.occurred_at) / 3600000000.0) < 24.0) AND parcours_events.type = 'friction' AND parcours_events.step IS NOT NULL AND (parcours_events.step NOT IN ('landing', 'cart', 'payment')) GROUP BY first_exposures.exposure_id, first_exposures.variant_key, parcours_events.step) AS s GROUP BY s.variant_key, s.step;

-- multi_variant_units
SELECT count(*) AS count_1 
FROM (SELECT experiment_exposures.unit_id AS unit_id 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures GROUP BY experiment_exposures.unit_id 
HAVING min(experiment_exposures.variant_key) != max(experiment_exposures.variant_key)) AS multi_variant;

-- quantile_order_statistics
SELECT ranked_values.variant_key, ranked_values.n, ranked_values.value_rank, ranked_values.value 
FROM (SELECT quantile_values.variant_key AS variant_key, quantile_values.value AS value, row_number() OVER (PARTITION BY quantile_values.variant_key ORDER BY quantile_values.value) AS value_rank, count(*) OVER (PARTITION BY quantile_values.variant_key) AS n 
FROM (SELECT ordered_steps.exposure_id AS unit, ordered_steps.variant_key AS variant_key, ordered_steps.step AS step, (DATEDIFF('microsecond', ordered_steps.entered, CASE WHEN (ordered_steps.position = 1) THEN ordered_steps.after_1 END) / 1000000.0) AS value 
FROM (SELECT first_exposures.exposure_id AS exposure_id, first_exposures.variant_key AS variant_key, parcours_events.step AS step, CASE parcours_events.step WHEN 'landing' THEN 0 WHEN 'cart' THEN 1 WHEN 'payment' THEN 2 END AS position, parcours_events.occurred_at AS entered, row_number() OVER (PARTITION BY first_exposures.exposure_id, parcours_events.step ORDER BY parcours_events.occurred_at, parcours_events.id) AS nth, min(CASE WHEN (CASE parcours_events.step WHEN 'landing' THEN 0 WHEN 'cart' THEN 1 WHEN 'payment' THEN 2 END > 1) THEN parcours_events.occurred_at END) OVER (PARTITION BY first_exposures.exposure_id ORDER BY parcours_events.occurred_at, CASE parcours_events.step WHEN 'landing' THEN 0 WHEN 'cart' THEN 1 WHEN 'payment' THEN 2 END ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS after_1 
FROM (SELECT ranked_exposures.exposure_id AS exposure_id, ranked_exposures.unit_id AS unit_id, ranked_exposures.variant_key AS variant_key, ranked_exposures.exposed_at AS exposed_at 
FROM (SELECT experiment_exposures.exposure_id AS exposure_id, experiment_exposures.unit_id AS unit_id, experiment_exposures.variant_key AS variant_key, experiment_exposures.exposed_at AS exposed_at, row_number() OVER (PARTITION BY experiment_exposures.unit_id ORDER BY experiment_exposures.exposed_at, experiment_exposures.exposure_id) AS exposure_rank, min(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS lowest_variant, max(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS highest_variant 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures) AS ranked_exposures 
WHERE ranked_exposures.exposure_rank = 1 AND ranked_exposures.lowest_variant = ranked_exposures.highest_variant) AS first_exposures JOIN parcours_events ON parcours_events.unit_id = first_exposures.unit_id 
WHERE parcours_events.occurred_at >= first_exposures.exposed_at AND ((DATEDIFF('microsecond', first_exposures.exposed_at, parcours_events.occurred_at) / 3600000000.0) < 24.0) AND parcours_events.type = 'step' AND parcours_events.step IN ('cart', 'payment')) AS ordered_steps 
WHERE ordered_steps.nth = 1 AND CASE WHEN (ordered_steps.position = 1) THEN ordered_steps.after_1 END IS NOT NULL AND ordered_steps.step IN ('cart')) AS quantile_values) AS ranked_values 
WHERE ranked_values.value_rank = 1 OR ranked_values.value_rank = ranked_values.n OR abs(ranked_values.value_rank - ranked_values.n * 0.9) <= 2 OR (abs(ranked_values.value_rank - ranked_values.n * 0.9) - 2) * (abs(ranked_values.value_rank - ranked_values.n * 0.9) - 2) <= ranked_values.n * 0.34573129386247137 AND ranked_values.n * 0.34573129386247137 <= (abs(ranked_values.value_rank - ranked_values.n * 0.9) + 2) * (abs(ranked_values.value_rank - ranked_values.n * 0.9) + 2);

-- quantile_clusters
SELECT unit_clusters.variant_key, count(*) AS n, sum(unit_clusters.s) AS num_sum, sum(unit_clusters.s * unit_clusters.s) AS num_sum_squares, sum(unit_clusters.events) AS den_sum, sum(unit_clusters.events * unit_clusters.events) AS den_sum_squares, sum(unit_clusters.s * unit_clusters.events) AS num_den_sum 
FROM (SELECT quantile_values.variant_key AS variant_key, sum(CASE WHEN (quantile_values.value <= CASE WHEN (quantile_values.variant_key = 'control') THEN 59.5 WHEN (quantile_values.variant_key = 'treatment') THEN 61.25 END) THEN 1 ELSE 0 END) AS s, count(*) AS events 
FROM (SELECT first_exposures.exposure_id AS unit, first_exposures.variant_key AS variant_key, CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END AS value 
FROM (SELECT ranked_exposures.exposure_id AS exposure_id, ranked_exposures.unit_id AS unit_id, ranked_exposures.variant_key AS variant_key, ranked_exposures.exposed_at AS exposed_at 
FROM (SELECT experiment_exposures.exposure_id AS exposure_id, experiment_exposures.unit_id AS unit_id, experiment_exposures.variant_key AS variant_key, experiment_exposures.exposed_at AS exposed_at, row_number() OVER (PARTITION BY experiment_exposures.unit_id ORDER BY experiment_exposures.exposed_at, experiment_exposures.exposure_id) AS exposure_rank, min(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS lowest_variant, max(experiment_exposures.variant_key) OVER (PARTITION BY experiment_exposures.unit_id) AS highest_variant 
FROM (SELECT parcours_exposures.exposure_id AS exposure_id, parcours_exposures.unit_id AS unit_id, parcours_exposures.variant_key AS variant_key, parcours_exposures.exposed_at AS exposed_at 
FROM parcours_exposures 
WHERE parcours_exposures.experiment_id = 7) AS experiment_exposures) AS ranked_exposures 
WHERE ranked_exposures.exposure_rank = 1 AND ranked_exposures.lowest_variant = ranked_exposures.highest_variant) AS first_exposures JOIN parcours_events ON parcours_events.unit_id = first_exposures.unit_id 
WHERE parcours_events.occurred_at >= first_exposures.exposed_at AND ((DATEDIFF('microsecond', first_exposures.exposed_at, parcours_events.occurred_at) / 3600000000.0) < 24.0) AND parcours_events.name = 'purchase' AND CASE WHEN (abs(parcours_events.value) <= 1000000000000.0) THEN parcours_events.value END IS NOT NULL) AS quantile_values GROUP BY quantile_values.unit, quantile_values.variant_key) AS unit_clusters GROUP BY unit_clusters.variant_key;
