//! Grafana's "is this schema on the search path" test, answered from the connection's own
//! `search_path`.
//!
//! Grafana's PostgreSQL datasource (its query builder's table and column lists) asks
//! whether a schema is on the search path with a subquery that splits
//! `current_setting('search_path')` at commas, walks it with `generate_series` over the
//! array's bounds and maps `"$user"` to `user`. DataFusion cannot run it (a function-table
//! alias used as a scalar, `user` as a value, a subquery inside `CASE`), and
//! datafusion-postgres replaces it with `''`, so no schema is ever on the path and every
//! table is offered as `public.flows` with no columns. Here the subquery is replaced, before
//! planning, by the list PostgreSQL would compute for this connection: the same split and
//! trim of its `search_path` now, with `"$user"` as the logged-in user.

use std::borrow::Cow;
use std::sync::LazyLock;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// The subquery with the parentheses around it, as Grafana writes it in
/// `postgresMetaQuery.ts` (`buildSchemaConstraint`); matched token by token, so spacing
/// and keyword case do not matter.
const GRAFANA_SUBQUERY: &str = r#"(
    SELECT
      CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM
      generate_series(
        array_lower(string_to_array(current_setting('search_path'),','),1),
        array_upper(string_to_array(current_setting('search_path'),','),1)
      ) as i,
      string_to_array(current_setting('search_path'),',') s
    )"#;

static PATTERN: LazyLock<Vec<Token>> = LazyLock::new(|| {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, GRAFANA_SUBQUERY)
        .tokenize()
        .expect("the pattern is valid SQL");
    tokens.into_iter().filter(|t| !is_space(t)).collect()
});

fn is_space(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// Whether two tokens are the same SQL: unquoted words compare without case.
fn same(a: &Token, b: &Token) -> bool {
    match (a, b) {
        (Token::Word(x), Token::Word(y)) => {
            x.quote_style == y.quote_style
                && match x.quote_style {
                    None => x.value.eq_ignore_ascii_case(&y.value),
                    Some(_) => x.value == y.value,
                }
        }
        _ => a == b,
    }
}

/// The schemas PostgreSQL's evaluation of the subquery yields for `search_path` and `user`:
/// each comma-separated element trimmed of spaces, `"$user"` standing for the user.
fn schemas_on_path(search_path: &str, user: &str) -> Vec<String> {
    if search_path.is_empty() {
        // string_to_array('', ',') is an empty array: no rows.
        return Vec::new();
    }
    search_path
        .split(',')
        .map(|s| s.trim_matches(' '))
        .map(|s| if s == "\"$user\"" { user } else { s })
        .map(str::to_string)
        .collect()
}

/// `(… the list …)`: an IN list that holds what the subquery would return.
fn in_list(schemas: &[String]) -> String {
    if schemas.is_empty() {
        // `x IN (NULL)` is never true, as `x IN (empty subquery)` is never true.
        return "(NULL)".to_string();
    }
    let quoted: Vec<String> = schemas
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    format!("({})", quoted.join(", "))
}

/// `sql` with every occurrence of Grafana's search-path subquery replaced by the list it
/// evaluates to for this `search_path` and `user`; `sql` itself when there is none (or it
/// does not tokenize: the planner reports that error). Everything outside the subquery is
/// kept byte for byte.
pub(crate) fn resolve<'a>(sql: &'a str, search_path: &str, user: &str) -> Cow<'a, str> {
    // Cheap test first: nearly every statement is not Grafana's catalog query.
    if !sql.contains("search_path") || !sql.contains("generate_series") {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return Cow::Borrowed(sql);
    };
    let offsets = ByteOffsets::new(sql);
    let start_of = |i: usize| {
        tokens.get(i).map_or(sql.len(), |t| {
            offsets.of(t.span.start.line, t.span.start.column)
        })
    };
    let replacement = in_list(&schemas_on_path(search_path, user));
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < tokens.len() {
        match match_at(&tokens, i, &PATTERN) {
            Some(end) => {
                out.push_str(&sql[copied..start_of(i)]);
                out.push_str(&replacement);
                copied = start_of(end);
                i = end;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

/// Byte offsets of the tokenizer's (line, column) locations, columns counted in characters.
struct ByteOffsets<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> ByteOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        ByteOffsets { sql, line_starts }
    }

    fn of(&self, line: u64, column: u64) -> usize {
        let Some(&start) = self.line_starts.get((line as usize).saturating_sub(1)) else {
            return self.sql.len();
        };
        self.sql[start..]
            .char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(self.sql.len(), |(i, _)| start + i)
    }
}

/// The index after the match when `pattern` (no whitespace) starts at `tokens[start]`,
/// whitespace between tokens skipped.
fn match_at(tokens: &[TokenWithSpan], start: usize, pattern: &[Token]) -> Option<usize> {
    let mut i = start;
    for (n, p) in pattern.iter().enumerate() {
        if n > 0 {
            while i < tokens.len() && is_space(&tokens[i].token) {
                i += 1;
            }
        }
        if i >= tokens.len() || !same(&tokens[i].token, p) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_evaluates_as_postgresql_evaluates_it() {
        assert_eq!(
            schemas_on_path("\"$user\", public", "grafana"),
            vec!["grafana", "public"]
        );
        assert_eq!(
            schemas_on_path("public,  flows_x ", "u"),
            vec!["public", "flows_x"]
        );
        assert!(schemas_on_path("", "u").is_empty());
        assert_eq!(in_list(&[]), "(NULL)");
        assert_eq!(in_list(&["o'k".to_string()]), "('o''k')");
    }

    #[test]
    fn grafanas_subquery_becomes_the_list_and_the_rest_is_kept() {
        let sql = format!(
            "SELECT CASE WHEN quote_ident(table_schema) IN {GRAFANA_SUBQUERY} THEN 1 ELSE 0 END \
             FROM information_schema.tables WHERE table_name = 'search_path generate_series' \
             AND table_name <> 'O''Brien — ü'"
        );
        let out = resolve(&sql, "\"$user\", public", "grafana");
        assert_eq!(
            out,
            "SELECT CASE WHEN quote_ident(table_schema) IN ('grafana', 'public') THEN 1 ELSE 0 END \
             FROM information_schema.tables WHERE table_name = 'search_path generate_series' \
             AND table_name <> 'O''Brien — ü'"
        );
        // Grafana's own spacing, keywords in another case: still the same SQL.
        let spaced = sql
            .replace("SELECT\n      CASE", "select case")
            .replace("  ", " ");
        assert_eq!(
            resolve(&spaced, "public", "g")
                .matches("('public')")
                .count(),
            1
        );
    }

    #[test]
    fn other_statements_are_untouched() {
        let sql = "SELECT current_setting('search_path'), generate_series(1, 3)";
        assert!(matches!(resolve(sql, "public", "u"), Cow::Borrowed(_)));
        // A near miss (another setting) is not Grafana's test and is left to the planner.
        let near = GRAFANA_SUBQUERY.replace("'search_path'),','),1),", "'other'),','),1),");
        let sql = format!("SELECT 1 WHERE 'public' IN {near}");
        assert_eq!(resolve(&sql, "public", "u"), sql);
    }
}
