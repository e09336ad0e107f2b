//! Typed access to the columns of stored rows read back (the history the enricher reloads,
//! the translations whois reads), with errors that name the table and column at fault.

use arrow::array::{AsArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::datatypes::{
    ArrowPrimitiveType, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};

/// Stored rows that lack a column, or carry it with another type.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    #[error("{table} has no column {column}")]
    Missing {
        table: &'static str,
        column: &'static str,
    },
    #[error("{table}.{column} is not {expected}")]
    WrongType {
        table: &'static str,
        column: &'static str,
        expected: &'static str,
    },
}

/// The columns of one batch of `table`'s rows.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    table: &'static str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(table: &'static str, batch: &'a RecordBatch) -> Self {
        Columns { table, batch }
    }

    fn typed<T: ArrowPrimitiveType>(
        &self,
        column: &'static str,
        expected: &'static str,
    ) -> Result<&'a PrimitiveArray<T>, ColumnError> {
        self.column(column)?
            .as_primitive_opt::<T>()
            .ok_or(ColumnError::WrongType {
                table: self.table,
                column,
                expected,
            })
    }

    fn column(&self, column: &'static str) -> Result<&'a arrow::array::ArrayRef, ColumnError> {
        self.batch
            .column_by_name(column)
            .ok_or(ColumnError::Missing {
                table: self.table,
                column,
            })
    }

    pub fn text(&self, column: &'static str) -> Result<&'a StringArray, ColumnError> {
        self.column(column)?
            .as_string_opt::<i32>()
            .ok_or(ColumnError::WrongType {
                table: self.table,
                column,
                expected: "text",
            })
    }

    pub fn timestamp(
        &self,
        column: &'static str,
    ) -> Result<&'a PrimitiveArray<TimestampMicrosecondType>, ColumnError> {
        self.typed(column, "a µs timestamp")
    }

    pub fn int16(
        &self,
        column: &'static str,
    ) -> Result<&'a PrimitiveArray<Int16Type>, ColumnError> {
        self.typed(column, "a smallint")
    }

    pub fn int32(
        &self,
        column: &'static str,
    ) -> Result<&'a PrimitiveArray<Int32Type>, ColumnError> {
        self.typed(column, "an int")
    }

    pub fn int64(
        &self,
        column: &'static str,
    ) -> Result<&'a PrimitiveArray<Int64Type>, ColumnError> {
        self.typed(column, "a bigint")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn errors_name_the_table_and_column() {
        let batch = RecordBatch::try_from_iter([(
            "ip",
            Arc::new(arrow::array::Int64Array::from(vec![1])) as _,
        )])
        .unwrap();
        let c = Columns::new("ip_history", &batch);
        assert_eq!(c.int64("ip").unwrap().value(0), 1);
        let wrong = c.text("ip").unwrap_err();
        assert_eq!(wrong.to_string(), "ip_history.ip is not text");
        let missing = c.timestamp("valid_from").unwrap_err();
        assert_eq!(missing.to_string(), "ip_history has no column valid_from");
    }
}
