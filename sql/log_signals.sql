-- Log signals of the windows that just closed. Each row becomes a point (`name`, `labels`,
-- `value`, at `window_start`) in `points`, so the feature plan and the detector score it like
-- any metric: a burst of errors, an error ratio that climbs, a template never seen before, a
-- template whose rate jumps.
--
-- `logs` holds the log rows of those windows: ts, service, level, message, template_id, template,
-- new_template, attributes, window_start, window_end. The result must have the columns
-- window_start (timestamp), name (string), labels (map of string to string) and value (double).
SELECT window_start, 'log_records' AS name,
       map(['service', 'level'], [service, level]) AS labels,
       CAST(count(*) AS DOUBLE) AS value
FROM logs GROUP BY window_start, service, level
UNION ALL
SELECT window_start, 'log_error_ratio',
       map(['service'], [service]),
       avg(CASE WHEN level IN ('error', 'fatal') THEN 1.0 ELSE 0.0 END)
FROM logs GROUP BY window_start, service
UNION ALL
SELECT window_start, 'log_new_templates',
       map(['service'], [service]),
       CAST(sum(CASE WHEN new_template THEN 1 ELSE 0 END) AS DOUBLE)
FROM logs GROUP BY window_start, service
UNION ALL
SELECT window_start, 'log_template_records',
       map(['service', 'template_id'], [service, CAST(template_id AS VARCHAR)]),
       CAST(count(*) AS DOUBLE)
FROM logs GROUP BY window_start, service, template_id
