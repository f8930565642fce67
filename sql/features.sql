-- Per-series features of the windows that just closed.
--
-- `points` holds the rows of those windows: ts, series_id, series, name, labels, value,
-- window_start, window_end. The detector needs window_start, window_end, series_id, series, name
-- and the feature it scores (`mean` by default, see [detector] feature in the config); add
-- columns freely, they are kept in the `features` table. No ORDER BY is needed: when several
-- windows close at once, the engine hands each series' rows to the detector oldest first.
-- Group by window_start and window_end: the window next to close is aggregated on its own, as
-- its rows arrive (a text that reads `points` twice or calls now() runs at the close instead).
-- A series' number stands for its key (`series`, which holds `name`), so grouping by the number
-- alone makes the same groups at about half the cost of hashing and comparing both strings.
SELECT
  window_start,
  window_end,
  series_id,
  any_value(series)                   AS series,
  any_value(name)                     AS name,
  count(*)                            AS count,
  avg(value)                          AS mean,
  min(value)                          AS min,
  max(value)                          AS max,
  percentile_cont(value, 0.95)        AS p95
FROM points
GROUP BY window_start, window_end, series_id
