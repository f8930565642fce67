-- Health: a 0-100 score per service and window, from the table `health_inputs`:
--
--   window_start, window_end, service,
--   slo_burn_1h        the highest 1-hour burn rate of the service's SLOs (NULL without SLOs)
--   slo_alert          'page' or 'ticket' when an SLO alert fires
--   budget_remaining   the lowest error budget remaining of its SLOs (1 = untouched, < 0 = overspent)
--   open_critical      open incidents of the service, critical
--   open_warning       open incidents of the service, warning
--   anomalies_critical anomaly rows (score >= 0.9999) of its series since the last health row
--   anomalies_warning  anomaly rows at or above the decision threshold, below 0.9999
--   hours_to_limit     the earliest a capacity forecast says one of its series may reach its limit
--   log_error_ratio    share of its log lines at error level in the latest window
--
-- Every `lost_*` column is the points one contributor takes away; the score is 100 minus
-- their sum (at least 0), and the explanation names the contributors by their share of the
-- lost points. Edit the weights here (`health.sql_file`), or add a `lost_*` column: it is
-- counted and explained like the others.
SELECT window_start, window_end, service,
       score,
       CASE WHEN score >= 80 THEN 'healthy' WHEN score >= 50 THEN 'degraded' ELSE 'critical' END AS status,
       lost_slo_burn, lost_error_budget, lost_incidents, lost_anomalies, lost_saturation, lost_log_errors,
       slo_burn_1h, budget_remaining, open_critical, open_warning, anomalies_critical, anomalies_warning,
       hours_to_limit, log_error_ratio
FROM (
  SELECT *,
         GREATEST(0.0, 100.0 - (lost_slo_burn + lost_error_budget + lost_incidents + lost_anomalies
                               + lost_saturation + lost_log_errors)) AS score
  FROM (
    SELECT *,
           -- SLO burn: 30 points at a paging burn rate (14.4x over 1 h), in proportion below it.
           LEAST(30.0, 30.0 * COALESCE(slo_burn_1h, 0.0) / 14.4) AS lost_slo_burn,
           -- Error budget: up to 15 points as it is spent.
           CASE WHEN budget_remaining IS NULL THEN 0.0
                ELSE 15.0 * LEAST(1.0, GREATEST(0.0, 1.0 - budget_remaining)) END AS lost_error_budget,
           -- Open incidents: 20 points each critical, 8 each warning, at most 40.
           LEAST(40.0, 20.0 * open_critical + 8.0 * open_warning) AS lost_incidents,
           -- Anomalies: 5 points each critical, 2 each warning, at most 15.
           LEAST(15.0, 5.0 * anomalies_critical + 2.0 * anomalies_warning) AS lost_anomalies,
           -- Saturation: a limit within 1 h takes 20 points, 6 h 10, 24 h 5.
           CASE WHEN hours_to_limit IS NULL THEN 0.0 WHEN hours_to_limit <= 1 THEN 20.0
                WHEN hours_to_limit <= 6 THEN 10.0 WHEN hours_to_limit <= 24 THEN 5.0 ELSE 0.0 END AS lost_saturation,
           -- Log errors: 15 points at 25% of lines above a 5% baseline, in proportion below.
           LEAST(15.0, 15.0 * GREATEST(0.0, COALESCE(log_error_ratio, 0.0) - 0.05) / 0.20) AS lost_log_errors
    FROM health_inputs
  ) AS lost
) AS scored
ORDER BY service
