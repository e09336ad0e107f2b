//! `--format parquet`'s writer: a Parquet file whose columns are encoded on several threads
//! at once. Encoding is the costliest stage of a replay to Parquet (every text value is
//! hashed into its column's dictionary), and one column's encoding does not depend on
//! another's, so each row group's columns are dealt out to a few encoding threads.

use std::fs::File;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// Threads encoding one row group's columns.
const ENCODING_THREADS: usize = 2;

/// A Parquet file being written, a row group at a time.
pub struct ParquetOut {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    row_group_rows: usize,
    /// Row groups finished so far.
    groups: usize,
    /// The row group being encoded, and its rows so far.
    group: Option<(Vec<Encoder>, usize)>,
}

/// One encoding thread of a row group: it owns the column writers of every
/// `ENCODING_THREADS`-th column and returns their chunks when its queue closes.
struct Encoder {
    columns: SyncSender<Vec<ArrowLeafColumn>>,
    done: JoinHandle<Result<Vec<ArrowColumnChunk>, ParquetError>>,
}

impl ParquetOut {
    /// A file of `schema`'s rows, encoded as `properties` say (the Arrow schema is stored in
    /// its metadata, as `ArrowWriter` stores it).
    pub fn create(
        file: File,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<ParquetOut, ParquetError> {
        let row_group_rows = properties.max_row_group_row_count().unwrap_or(1 << 20);
        let (file, factory) = ArrowWriter::try_new(file, schema.clone(), Some(properties))?
            .into_serialized_writer()?;
        Ok(ParquetOut {
            file,
            factory,
            schema,
            row_group_rows: row_group_rows.max(1),
            groups: 0,
            group: None,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.group.is_none() {
                self.group = Some((self.start_group()?, 0));
            }
            let (encoders, rows) = self.group.as_mut().expect("started above");
            let n = (self.row_group_rows - *rows).min(batch.num_rows() - offset);
            let rows_of = batch.slice(offset, n);
            let mut dealt: Vec<Vec<ArrowLeafColumn>> =
                (0..encoders.len()).map(|_| Vec::new()).collect();
            let mut leaf = 0;
            for (field, column) in self.schema.fields().iter().zip(rows_of.columns()) {
                for l in compute_leaves(field, column)? {
                    dealt[leaf % encoders.len()].push(l);
                    leaf += 1;
                }
            }
            for (encoder, columns) in encoders.iter().zip(dealt) {
                if encoder.columns.send(columns).is_err() {
                    // The thread failed; closing the group returns its error.
                    return self.finish_group();
                }
            }
            *rows += n;
            offset += n;
            if *rows == self.row_group_rows {
                self.finish_group()?;
            }
        }
        Ok(())
    }

    /// Finishes the last row group and the file.
    pub fn close(mut self) -> Result<(), ParquetError> {
        self.finish_group()?;
        self.file.close()?;
        Ok(())
    }

    fn start_group(&self) -> Result<Vec<Encoder>, ParquetError> {
        let mut writers: Vec<Vec<ArrowColumnWriter>> =
            (0..ENCODING_THREADS).map(|_| Vec::new()).collect();
        for (i, w) in self
            .factory
            .create_column_writers(self.groups)?
            .into_iter()
            .enumerate()
        {
            writers[i % ENCODING_THREADS].push(w);
        }
        Ok(writers
            .into_iter()
            .map(|mut writers| {
                let (columns, queue) = sync_channel::<Vec<ArrowLeafColumn>>(2);
                let done = std::thread::spawn(move || {
                    for batch in queue {
                        for (writer, column) in writers.iter_mut().zip(&batch) {
                            writer.write(column)?;
                        }
                    }
                    writers.into_iter().map(|w| w.close()).collect()
                });
                Encoder { columns, done }
            })
            .collect())
    }

    /// Closes the row group being encoded (if any) and appends it to the file, its
    /// columns back in the schema's order.
    fn finish_group(&mut self) -> Result<(), ParquetError> {
        let Some((encoders, _)) = self.group.take() else {
            return Ok(());
        };
        let mut chunks: Vec<std::vec::IntoIter<ArrowColumnChunk>> = Vec::new();
        let mut failed = None;
        for Encoder { columns, done } in encoders {
            drop(columns);
            match done.join() {
                Ok(Ok(c)) => chunks.push(c.into_iter()),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => {
                    failed = failed.or(Some(ParquetError::General(
                        "a Parquet encoding thread panicked".into(),
                    )))
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let mut group = self.file.next_row_group()?;
        let columns: usize = chunks.iter().map(|c| c.len()).sum();
        let threads = chunks.len();
        for i in 0..columns {
            let chunk = chunks[i % threads]
                .next()
                .expect("each thread holds every n-th column");
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.groups += 1;
        Ok(())
    }
}
