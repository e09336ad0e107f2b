//! `parse_ident(text [, strict])`, as in PostgreSQL: a qualified identifier split into its
//! parts, unquoted parts folded to lower case, quoted parts kept as written (`""` an escaped
//! quote). Grafana's query builder sends it to find a table's columns.
//!
//! A string that is not an identifier is the query's mistake and fails with PostgreSQL's
//! message; with `strict` false, text after the identifier is ignored, as PostgreSQL does.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

pub fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(ParseIdent::new())]
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseIdent {
    signature: Signature,
}

impl ParseIdent {
    fn new() -> Self {
        ParseIdent {
            signature: Signature::one_of(
                vec![
                    TypeSignature::String(1),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

fn item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Utf8, true))
}

impl ScalarUDFImpl for ParseIdent {
    fn name(&self) -> &str {
        "parse_ident"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::List(item()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let strict = match args.args.get(1) {
            None => true,
            Some(ColumnarValue::Scalar(ScalarValue::Boolean(Some(s)))) => *s,
            Some(ColumnarValue::Scalar(ScalarValue::Boolean(None))) => {
                return Ok(ColumnarValue::Scalar(ScalarValue::try_from(
                    &DataType::List(item()),
                )?));
            }
            Some(_) => return exec_err!("parse_ident: strict must be a constant"),
        };
        let rows = args.number_rows;
        let text = args.args[0].clone().into_array(rows)?;
        let text = arrow::compute::cast(&text, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mut out = ListBuilder::new(StringBuilder::new()).with_field(item());
        for i in 0..text.len() {
            if text.is_null(i) {
                out.append_null();
                continue;
            }
            match split(text.value(i), strict) {
                Ok(parts) => {
                    for p in parts {
                        out.values().append_value(p);
                    }
                    out.append(true);
                }
                Err(e) => return exec_err!("{e}"),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(array),
        })
    }
}

/// The parts of `text`, or PostgreSQL's message for why it is not an identifier.
fn split(text: &str, strict: bool) -> Result<Vec<String>, String> {
    let invalid = || format!("string is not a valid identifier: \"{text}\"");
    let mut parts = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut part = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            part.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => part.push(c),
                    None => {
                        return Err(format!(
                            "string is not a valid identifier: \"{text}\"\nString has unclosed double quotes."
                        ));
                    }
                }
            };
            if part.is_empty() {
                return Err(format!(
                    "string is not a valid identifier: \"{text}\"\nQuoted identifier must not be empty."
                ));
            }
            parts.push(part);
            rest = &quoted[end..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            if word.is_empty() || word.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                return Err(invalid());
            }
            parts.push(word.to_lowercase());
            rest = &rest[end..];
        }
        rest = rest.trim_start();
        match rest.strip_prefix('.') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() || !strict => return Ok(parts),
            None => return Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fold_as_postgresql_folds_them() {
        assert_eq!(split("public.flows", true).unwrap(), ["public", "flows"]);
        assert_eq!(split("Flows", true).unwrap(), ["flows"]);
        assert_eq!(
            split(" \"My \"\"T\"\" \" . x ", true).unwrap(),
            ["My \"T\" ", "x"]
        );
        assert_eq!(split("a.b()", false).unwrap(), ["a", "b"]);
    }

    #[test]
    fn what_is_not_an_identifier_fails() {
        for bad in ["", "a.", ".a", "a b", "1a", "\"\"", "\"open", "a.b()"] {
            assert!(split(bad, true).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn grafanas_use_of_it_plans_and_runs() {
        let ctx = datafusion::prelude::SessionContext::new();
        for udf in udfs() {
            ctx.register_udf(udf);
        }
        let batches = ctx
            .sql(
                "SELECT array_length(parse_ident('public.flows'), 1) AS n, \
                 (parse_ident('public.flows'))[2] AS t, parse_ident(NULL) IS NULL AS null_in",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 2 | flows | true    |"), "{text}");
        let err = ctx
            .sql("SELECT parse_ident('a b')")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a valid identifier"), "{err}");
    }
}
