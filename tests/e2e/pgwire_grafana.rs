//! What Grafana's PostgreSQL datasource sends, reproduced from its source
//! (pkg/tsdb/grafana-postgresql-datasource and its frontend's postgresMetaQuery.ts).

/// `sqleng.Interpolate`, then the datasource's macro engine (macros.go), TimescaleDB off:
/// every match of `\$([_a-zA-Z0-9]+)\(([^\)]*)\)` is replaced, its arguments split at commas
/// and trimmed of spaces.
pub fn expand(sql: &str, from: i64, to: i64, interval_secs: i64) -> String {
    let sql = sql
        .replace("$__interval_ms", &(interval_secs * 1000).to_string())
        .replace("$__interval", &format_interval(interval_secs))
        .replace("$__unixEpochFrom()", &from.to_string())
        .replace("$__unixEpochTo()", &to.to_string());
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let call = &after[name_len..];
        match (name_len, call.strip_prefix('('), call.find(')')) {
            (1.., Some(_), Some(close)) => {
                let args: Vec<&str> = call[1..close]
                    .split(',')
                    .map(|a| a.trim_matches(' '))
                    .collect();
                let rest_after = &call[close + 1..];
                // Pre-5.3 compatibility: `$__timeGroup(...)` followed by a comma aliases.
                let name = if name == "__timeGroup" && rest_after.starts_with(',') {
                    "__timeGroupAlias"
                } else {
                    name
                };
                out.push_str(&evaluate(name, &args, from, to));
                rest = rest_after;
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn evaluate(name: &str, args: &[&str], from: i64, to: i64) -> String {
    let (from_text, to_text) = (crate::support::rfc3339(from), crate::support::rfc3339(to));
    match name {
        "__time" => format!("{} AS \"time\"", args[0]),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", args[0]),
        "__timeFilter" => format!("{} BETWEEN '{from_text}' AND '{to_text}'", args[0]),
        "__timeFrom" => format!("'{from_text}'"),
        "__timeTo" => format!("'{to_text}'"),
        "__timeGroup" => {
            let secs = parse_interval(args[1].trim_matches('\''));
            format!("floor(extract(epoch from {})/{secs})*{secs}", args[0])
        }
        "__timeGroupAlias" => format!("{} AS \"time\"", evaluate("__timeGroup", args, from, to)),
        "__unixEpochFilter" => format!("{c} >= {from} AND {c} <= {to}", c = args[0]),
        "__unixEpochGroup" => {
            let secs = parse_interval(args[1].trim_matches('\''));
            format!("floor(({})/{secs})*{secs}", args[0])
        }
        "__unixEpochGroupAlias" => format!(
            "{} AS \"time\"",
            evaluate("__unixEpochGroup", args, from, to)
        ),
        other => panic!("Grafana would refuse the query: unknown macro {other:?}"),
    }
}

/// gtime.FormatInterval: the largest whole unit.
pub fn format_interval(secs: i64) -> String {
    for (unit, size) in [("y", 365 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

fn parse_interval(text: &str) -> i64 {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: i64 = n
        .parse()
        .unwrap_or_else(|_| panic!("Grafana would refuse interval {text:?}"));
    n * match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => panic!("Grafana would refuse interval {text:?}"),
    }
}

/// postgresMetaQuery.ts `buildSchemaConstraint()`.
fn schema_constraint() -> &'static str {
    "
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"
}

pub const VERSION: &str = "SELECT current_setting('server_version_num')::int/100 as version";
pub const TIMESCALEDB: &str = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'";

pub fn show_schemas() -> String {
    "SELECT schema_name AS \"name\"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"
        .to_string()
}

/// `showTables(schema?)`.
pub fn show_tables(schema: Option<&str>) -> String {
    match schema {
        Some(schema) => format!(
            "SELECT quote_ident(table_name) AS \"table\"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = '{}'
      ORDER BY 1",
            schema.replace('\'', "''")
        ),
        None => format!(
            "SELECT
    CASE WHEN {c}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS \"table\"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {c} THEN 0 ELSE 1 END, 1",
            c = schema_constraint()
        ),
    }
}

/// `getSchema(table)`: the columns the query builder offers.
pub fn get_schema(table: &str) -> String {
    let t = format!("'{}'", table.replace('\'', "''"));
    format!(
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident({t}),1) = 2
        THEN quote_ident(table_schema) = (parse_ident({t}))[1]
          AND quote_ident(table_name) = (parse_ident({t}))[2]
        ELSE quote_ident(table_name) = {t}
          AND {c}
      END",
        c = schema_constraint()
    )
}

#[test]
fn macros_expand_as_grafana_expands_them() {
    let from = 1_795_165_200; // 2026-11-20T09:00:00Z
    let sql = "SELECT $__timeGroupAlias(flow_start, $__interval), sum(bytes) * 1000.0 / $__interval_ms \
               FROM flows WHERE $__timeFilter(flow_start) AND $__unixEpochFilter(t) GROUP BY 1, $__timeGroup(flow_start, '1h'), $x";
    assert_eq!(
        expand(sql, from, from + 7200, 300),
        "SELECT floor(extract(epoch from flow_start)/300)*300 AS \"time\", sum(bytes) * 1000.0 / 300000 \
         FROM flows WHERE flow_start BETWEEN '2026-11-20T09:00:00Z' AND '2026-11-20T11:00:00Z' \
         AND t >= 1795165200 AND t <= 1795172400 GROUP BY 1, floor(extract(epoch from flow_start)/3600)*3600 AS \"time\", $x"
    );
}

/// The backend schema API (schema.go `querySchemas`), over the extended protocol as pgx
/// sends it.
pub const SCHEMA_API_SCHEMAS: &str = "SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name";

/// schema.go `queryTables`: `$1` is the schema.
pub const SCHEMA_API_TABLES: &str = "SELECT table_name FROM information_schema.tables
		 WHERE table_schema = $1 AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name";

/// schema.go `queryColumns`: `$1` the schema, `$2` the table.
pub const SCHEMA_API_COLUMNS: &str =
    "SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = $1 AND table_name = $2
		 ORDER BY ordinal_position";

/// schema.go `ColumnValues`: up to 100 distinct values of each column, one UNION ALL arm
/// per column.
pub fn schema_api_column_values(schema: &str, table: &str, columns: &[&str]) -> String {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let qualified = format!("{}.{}", ident(schema), ident(table));
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let col = ident(c);
            format!(
                "SELECT '{}' AS col_name, {col}::text AS val FROM (SELECT DISTINCT {col} FROM {qualified} \
                 WHERE {col} IS NOT NULL ORDER BY {col} LIMIT 100) sub_{i}",
                c.replace('\'', "''")
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}
